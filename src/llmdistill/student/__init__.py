"""The student: distillation loss, training with the HF Trainer, inference, model card.

Names are imported lazily so that `import llmdistill.student` does not load torch/transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "distillation_loss": "llmdistill.student.losses",
    "TrainResult": "llmdistill.student.train",
    "train_student": "llmdistill.student.train",
    "StudentClassifier": "llmdistill.student.predict",
    "render_model_card": "llmdistill.student.model_card",
    "update_metrics": "llmdistill.student.model_card",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
