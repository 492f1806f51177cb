"""The student zoo: which module trains and loads each kind of student.

`student.model` names the kind: `tfidf`, `model2vec` (or `model2vec:BASE`), anything else is a
Hugging Face model (embedded name, hub id or folder) trained by `student/train.py`. A kind's
module has `train(train, validation, labels, cfg, out_dir, manifest, *, anchor, overwrite) ->
TrainResult`, writing a folder whose `llmdistill.json` records the kind, and `load(model_dir,
threads) -> classifier` (`labels`, `backend`, `parameters`, `onnx_path`, `predict_proba`,
`predict`), which `StudentClassifier.load` returns for such a folder. A new kind is one module
and one `register` line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TRANSFORMERS = "transformers"
_KINDS: dict[str, str] = {}


def register(kind: str, module: str) -> None:
    """Make `student.model: KIND[:ARG]` train and load with `module`."""
    _KINDS[kind] = module


register("tfidf", "llmdistill.student.tfidf")
register("model2vec", "llmdistill.student.static")


def kind_of(model: str) -> str:
    """The kind a `student.model` value names (`transformers` for any HF model)."""
    name = model.split(":", 1)[0]
    return name if name in _KINDS else TRANSFORMERS


def kinds() -> list[str]:
    """Every kind, for help texts."""
    return [TRANSFORMERS, *_KINDS]


def kind_module(kind: str) -> ModuleType:
    """The module that trains and loads `kind`."""
    return importlib.import_module(_KINDS[kind])
