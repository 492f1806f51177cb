"""Teachers: one module per backend behind one small protocol (`Teacher.label_probs`).

A spec is an embedded name (`qwen2.5-1.5b`) or `BACKEND:TARGET`, where BACKEND is registered
below, one line each (see `registry.py` and docs/teachers.md, "Adding a backend").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmdistill import assets
from llmdistill.config import TeacherConfig, user_cache_dir
from llmdistill.errors import TeacherError
from llmdistill.tasks import get_task
from llmdistill.teachers.base import STATUSES, Annotation, Teacher
from llmdistill.teachers.registry import BACKENDS, TeacherRequest, register, unregister

__all__ = ["BACKENDS", "STATUSES", "Annotation", "Teacher", "TeacherRequest", "load_teacher",
           "parse_spec", "register", "spec_help", "unregister"]

EMBEDDED = tuple(name for name, a in assets.ASSETS.items() if a.kind == "teacher")

register("llamacpp", "llmdistill.teachers.llamacpp:from_spec", help="llamacpp:PATH.gguf")
register("hf", "llmdistill.teachers.hf:from_spec", help="hf:ID_OR_PATH")
register("openai", "llmdistill.teachers.openai_api:from_spec", help="openai:MODEL@BASE_URL")
register("replay", "llmdistill.teachers.replay:from_spec", help="replay:PATH#COLUMN",
         check="llmdistill.teachers.replay:parse_replay_target")


def spec_help() -> str:
    """Every accepted spec form, for error messages and CLI help: `a, b, c or d`."""
    forms = [*EMBEDDED, *(b.help for b in BACKENDS.values())]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else forms[0]


def parse_spec(spec: str) -> tuple[str, str]:
    """`qwen2.5-1.5b` → ("embedded", name); `llamacpp:PATH` / `hf:ID` → (backend, target).

    The target is checked by the backend's `check` where it has one (`replay:PATH#COLUMN[?...]`
    syntax errors surface here, before any file is read).
    """
    if spec in EMBEDDED:
        return "embedded", spec
    name, sep, target = spec.partition(":")
    backend = BACKENDS.get(name) if sep and target else None
    if backend is None:
        raise TeacherError(f"unknown teacher {spec!r}: use {spec_help()}")
    backend.validate(target)
    return name, target


def load_teacher(spec: str, labels: list[str], demos: list[dict], cfg: TeacherConfig,
                 cache_dir: Path | None, dry_run: bool = False,
                 task: str = "single_label") -> Teacher:
    """Build the teacher named by `spec`, with its prompt rendered and prefix evaluated.

    `cache_dir` holds joined model files (None: the user cache, `LLMDISTILL_CACHE`).
    `dry_run=True`: the teacher will only `estimate()`, so API backends send no request.
    `task`: `single_label` or `multi_label` (llmdistill.tasks); a backend whose teacher does not
    answer that task is refused in one line.
    """
    get_task(task)  # an unknown task fails here, before anything is loaded
    name, target = parse_spec(spec)
    request = TeacherRequest(target, labels, demos, cfg, cache_dir, dry_run, task)
    teacher = _load_embedded(request) if name == "embedded" else BACKENDS[name].load(request)
    if getattr(teacher, "task", "single_label") != task:
        teacher.close()
        raise TeacherError(f"the {name!r} teacher backend answers "
                           f"{getattr(teacher, 'task', 'single_label')}, not {task}: use an "
                           "llamacpp:, hf:, openai: or replay: teacher (or an embedded one)")
    return teacher


def _load_embedded(request: TeacherRequest) -> Teacher:
    """An embedded GGUF on llama.cpp, or on transformers when llama_cpp is not installed.

    Ids are those of earlier versions, so existing caches stay valid: the files are pinned and
    verified, so their name identifies them.
    """
    path = assets.teacher_gguf(request.target, request.cache_dir or user_cache_dir())
    if importlib.util.find_spec("llama_cpp") is None:  # no compiler: transformers reads GGUF
        from llmdistill.teachers.hf import HFTeacher
        return HFTeacher(str(path), request.labels, request.demos, request.cfg,
                         teacher_id=f"hf:{path.name}", task=request.task)
    from llmdistill.teachers.llamacpp import LlamaCppTeacher
    return LlamaCppTeacher(path, request.target, request.labels, request.demos, request.cfg,
                           task=request.task)
