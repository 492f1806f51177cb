"""Task types, one module each, registered in one line: `single_label` (one exclusive label per
text) and `multi_label` (any subset of the labels). A new task type is one module with a `Task`
subclass and one `register` line here."""

from __future__ import annotations

from collections.abc import Iterable

from llmdistill.errors import UsageError
from llmdistill.tasks.base import SEP, Task
from llmdistill.tasks.multi_label import MultiLabel
from llmdistill.tasks.single_label import SingleLabel

TASKS: dict[str, Task] = {}


def register(task: Task) -> None:
    TASKS[task.name] = task


register(SingleLabel())
register(MultiLabel())


def get_task(name: str) -> Task:
    """The registered task type `name`, or a one-line error listing the known ones."""
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]


def infer_task(values: Iterable) -> str:
    """`multi_label` when a gold cell holds a list or a `a|b` string, else `single_label`."""
    for v in values:
        if isinstance(v, (list, tuple)) or (hasattr(v, "ndim") and getattr(v, "ndim", 0) == 1):
            return "multi_label"
        if isinstance(v, str) and SEP in v:
            return "multi_label"
    return "single_label"


__all__ = ["SEP", "TASKS", "Task", "get_task", "infer_task", "register"]
