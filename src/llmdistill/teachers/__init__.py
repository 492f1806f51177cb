"""Teachers: one module per backend behind one small protocol (`Teacher.label_probs`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from llmdistill import assets
from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers.base import STATUSES, Annotation, Teacher

__all__ = ["STATUSES", "Annotation", "Teacher", "load_teacher", "parse_spec"]

EMBEDDED = ("qwen2.5-1.5b", "smollm2-135m")
BACKENDS = ("llamacpp", "hf", "openai", "replay")


def parse_spec(spec: str) -> tuple[str, str]:
    """`qwen2.5-1.5b` → ("embedded", name); `llamacpp:PATH` / `hf:ID` → (backend, target).

    `replay:PATH#COLUMN[?probs=A,B,C&rationale=COL&text=COL]` replays existing labels.
    """
    if spec in EMBEDDED:
        return "embedded", spec
    backend, sep, target = spec.partition(":")
    if not sep or backend not in BACKENDS or not target:
        raise TeacherError(f"unknown teacher {spec!r}: use {', '.join(EMBEDDED)}, "
                           "llamacpp:PATH.gguf, hf:ID_OR_PATH, openai:MODEL@BASE_URL or "
                           "replay:PATH#COLUMN")
    if backend == "replay":
        from llmdistill.teachers.replay import parse_replay_target

        parse_replay_target(target)  # syntax errors surface here, before any file is read
    return backend, target


def load_teacher(spec: str, labels: list[str], demos: list[dict], cfg: TeacherConfig,
                 cache_dir: Path) -> Teacher:
    """Build the teacher named by `spec`, with its prompt rendered and prefix evaluated."""
    backend, target = parse_spec(spec)
    if backend == "embedded":
        path = assets.teacher_gguf(target, cache_dir)
        if importlib.util.find_spec("llama_cpp") is None:  # no compiler: transformers reads GGUF
            from llmdistill.teachers.hf import HFTeacher
            return HFTeacher(str(path), labels, demos, cfg)
        from llmdistill.teachers.llamacpp import LlamaCppTeacher
        return LlamaCppTeacher(path, target, labels, demos, cfg)
    if backend == "llamacpp":
        from llmdistill.teachers.llamacpp import LlamaCppTeacher
        path = Path(target).expanduser()
        return LlamaCppTeacher(path, path.stem, labels, demos, cfg)
    if backend == "replay":
        from llmdistill.teachers.replay import ReplayTeacher
        return ReplayTeacher(target, labels)
    if backend == "openai":
        from llmdistill.teachers.openai_api import OpenAITeacher
        return OpenAITeacher(target, labels, demos, cfg)
    from llmdistill.teachers.hf import HFTeacher
    return HFTeacher(target, labels, demos, cfg)
