"""The teacher registry: a spec prefix (`hf` in `hf:ID`) → a factory, imported only when used.

A backend is one module with a factory `from_spec(request: TeacherRequest) -> Teacher` and one
line in `llmdistill/teachers/__init__.py`:

    register("mine", "llmdistill.teachers.mine:from_spec", help="mine:TARGET")

The factory may also be given as a callable (for tests and plugins). Nothing heavy (torch,
llama_cpp, openai) is imported until a teacher of that backend is loaded.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError

if TYPE_CHECKING:
    from llmdistill.teachers.base import Teacher

_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class TeacherRequest:
    """What a factory gets: the spec's target (after `PREFIX:`) and the run's settings.

    `dry_run`: only `estimate()` will be called, so send no request and spend nothing (an API
    teacher skips its preflight); local backends may ignore it.
    `task`: the task type the teacher answers (`llmdistill.tasks`); a backend that cannot answer
    it leaves its teacher's `task` at `single_label` and `load_teacher` refuses it.
    """

    target: str
    labels: list[str]
    demos: list[dict]
    cfg: TeacherConfig
    cache_dir: Path | None = None
    dry_run: bool = False
    task: str = "single_label"


Factory = Callable[[TeacherRequest], "Teacher"]
Check = Callable[[str], Any]


@dataclass(frozen=True)
class Backend:
    """One registered backend: its prefix, factory, spec syntax for help texts, target check.

    `factory` and `check` are callables or `"module:attribute"` strings imported on first use.
    `check(target)` runs when a spec is parsed, before anything is loaded, and raises
    `TeacherError` on a malformed target.
    """

    name: str
    factory: str | Factory
    help: str
    check: str | Check | None = None

    def load(self, request: TeacherRequest) -> Teacher:
        """Build the teacher for `request` with this backend's factory."""
        return _resolve(self.factory, self.name)(request)

    def validate(self, target: str) -> None:
        """Raise `TeacherError` if `target` is malformed for this backend (no file is read)."""
        if self.check is not None:
            _resolve(self.check, self.name)(target)


BACKENDS: dict[str, Backend] = {}


def register(name: str, factory: str | Factory, *, help: str,
             check: str | Check | None = None) -> Backend:
    """Register (or replace) the backend for specs `NAME:TARGET`; `help` shows its syntax."""
    if not _NAME.fullmatch(name):
        raise TeacherError(f"teacher backend name {name!r} must be lowercase letters, digits, "
                           "'-' or '_', starting with a letter: rename it")
    if isinstance(factory, str) and ":" not in factory:
        raise TeacherError(f"teacher backend {name!r}: factory {factory!r} must be "
                           "'package.module:function' or a callable")
    backend = Backend(name, factory, help, check)
    BACKENDS[name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a registered backend (tests, plugins); unknown names are ignored."""
    BACKENDS.pop(name, None)


def _resolve(ref: str | Callable, backend: str) -> Callable:
    """A callable, or the attribute a `"module:attribute"` string names, imported now."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        missing = e.name or module
        if module == missing or module.startswith(missing + "."):
            raise TeacherError(f"teacher backend {backend!r}: no module {module}: fix its "
                               "register() line") from None
        raise TeacherError(f"the {backend!r} teacher backend needs {missing}, which is not "
                           "installed: pip install it (or the llmdistill extra that carries "
                           "it)") from None
    except AttributeError:
        raise TeacherError(f"teacher backend {backend!r}: {module} has no {attr!r}: fix its "
                           "register() line") from None
