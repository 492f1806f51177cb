"""llmdistill: distill a large language model into a small, fast text classifier.

    from llmdistill import RunConfig, run, StudentClassifier
    metrics = run(RunConfig())                       # annotate → train → evaluate → report
    clf = StudentClassifier.load("runs/demo/student")

Names load lazily: `import llmdistill` stays light (no torch, no transformers).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "llmdistill.config",
    "load_config": "llmdistill.config",
    "run": "llmdistill.pipeline",
    "annotate_texts": "llmdistill.pipeline",
    "load_dataset": "llmdistill.data",
    "load_teacher": "llmdistill.teachers",
    "StudentClassifier": "llmdistill.student.predict",
    "export_student": "llmdistill.student.export",
    "compare": "llmdistill.compare",
    "train_student": "llmdistill.student.train",
    "UsageError": "llmdistill.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
