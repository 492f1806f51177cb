"""ONNX export of a trained student, int8 dynamic quantization, and the parity check on both.

`export_student` writes `DIR/onnx/` (model.onnx, optionally model.int8.onnx, parity.json) all or
nothing: everything is built in a temporary folder next to it and renamed into place. Each file
is run on the parity texts and compared with the PyTorch model: label agreement, the largest
probability difference, and accuracy where the texts have gold labels. A file below the
configured agreement is kept for inspection but marked `passed: false`, so that
`StudentClassifier.load` (and with it `predict` and `serve`) never runs it.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmdistill import __version__
from llmdistill.config import ExportConfig
from llmdistill.errors import UsageError
from llmdistill.files import atomic_dir
from llmdistill.student.predict import (
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    PARITY_FILE,
    StudentClassifier,
    check_model_folder,
    weights_fingerprint,
)

logger = logging.getLogger(__name__)


@dataclass
class VariantParity:
    """How one exported file compares with the PyTorch model on the parity texts."""

    file: str
    precision: str
    agreement: float
    max_abs_prob_diff: float
    accuracy: float | None
    accuracy_change: float | None  # points: this file's accuracy − PyTorch's, × 100
    passed: bool
    bytes: int
    seconds: float  # to run all parity texts


@dataclass
class ExportResult:
    """What `export_student` wrote and whether every file passed."""

    out_dir: Path
    record: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(v["passed"] for v in self.record["variants"])

    @property
    def variants(self) -> list[dict[str, Any]]:
        return self.record["variants"]


def parity(reference: np.ndarray, candidate: np.ndarray, gold: list[str] | None,
           labels: list[str], min_agreement: float) -> dict[str, Any]:
    """Agreement of `candidate` with `reference` probabilities, and both accuracies on gold."""
    if reference.shape != candidate.shape or not len(reference):
        raise UsageError(f"parity needs two non-empty probability arrays of one shape (got "
                         f"{reference.shape} and {candidate.shape})")
    ref_pred, cand_pred = reference.argmax(axis=1), candidate.argmax(axis=1)
    agreement = float(np.mean(ref_pred == cand_pred))
    out: dict[str, Any] = {"agreement": agreement,
                           "max_abs_prob_diff": float(np.abs(reference - candidate).max()),
                           "accuracy": None, "reference_accuracy": None, "accuracy_change": None,
                           "passed": agreement >= min_agreement}
    if gold is not None:
        index = {lab: i for i, lab in enumerate(labels)}
        g = np.array([index.get(x, -1) for x in gold])
        out["reference_accuracy"] = float(np.mean(ref_pred == g))
        out["accuracy"] = float(np.mean(cand_pred == g))
        out["accuracy_change"] = 100 * (out["accuracy"] - out["reference_accuracy"])
    return out


def export_student(
    model_dir: str | Path,
    texts: list[str],
    gold: list[str] | None = None,
    cfg: ExportConfig | None = None,
    int8: bool | None = None,
    data_name: str = "",
) -> ExportResult:
    """Export `model_dir` to ONNX (and int8), check parity on `texts`, write `DIR/onnx/`.

    `gold` (labels of `texts`, optional) adds accuracies; `int8` overrides `cfg.int8`. Returns the
    record also written to parity.json; `result.passed` is False when a file missed
    `cfg.min_agreement` (the files stay, marked failed, and are never used).
    """
    cfg = cfg or ExportConfig()
    int8 = cfg.int8 if int8 is None else int8
    model_dir = Path(model_dir)
    check_model_folder(model_dir)
    texts = [str(t) for t in texts]
    if cfg.max_texts is not None and len(texts) > cfg.max_texts:
        texts, gold = texts[: cfg.max_texts], (gold[: cfg.max_texts] if gold else gold)
    if not texts:
        raise UsageError("no parity texts: pass --data with at least one text")
    reference = StudentClassifier.load(model_dir, backend="torch")
    labels = reference.labels
    if gold is not None and not set(gold) <= set(labels):
        bad = sorted(set(gold) - set(labels))[:5]
        raise UsageError(f"the parity data's labels {bad} are not the student's {labels}: "
                         "pass --data with the student's label set")
    final = model_dir / ONNX_DIR
    with atomic_dir(final) as tmp:
        t0 = time.perf_counter()
        export_onnx(reference, tmp / FP32_FILE, cfg.opset)
        files = [(FP32_FILE, "fp32")]
        if int8:
            quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE, cfg.per_channel, cfg.reduce_range)
            files.append((INT8_FILE, "int8"))
        export_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_probs = reference.predict_proba(texts, batch_size=cfg.batch_size)
        ref_seconds = time.perf_counter() - t0
        variants = []
        for name, precision in files:
            clf = StudentClassifier.load_onnx(model_dir, tmp / name, None, reference.parameters)
            t0 = time.perf_counter()
            probs = clf.predict_proba(texts, batch_size=cfg.batch_size)
            seconds = time.perf_counter() - t0
            p = parity(ref_probs, probs, gold, labels, cfg.min_agreement)
            variants.append(asdict(VariantParity(
                file=name, precision=precision, agreement=p["agreement"],
                max_abs_prob_diff=p["max_abs_prob_diff"], accuracy=p["accuracy"],
                accuracy_change=p["accuracy_change"], passed=p["passed"],
                bytes=(tmp / name).stat().st_size, seconds=seconds)))
        record = {
            "llmdistill_version": __version__,
            "weights_sha256": weights_fingerprint(model_dir),
            "labels": labels,
            "parameters": reference.parameters,
            "data": data_name,
            "texts": len(texts),
            "gold": gold is not None,
            "threshold": cfg.min_agreement,
            "torch_accuracy": (float(np.mean(np.array(labels)[ref_probs.argmax(1)]
                                             == np.array(gold))) if gold is not None else None),
            "torch_seconds": ref_seconds,
            "export_seconds": export_seconds,
            "settings": cfg.model_dump(mode="json") | {"int8": int8},
            "variants": variants,
            "passed": all(v["passed"] for v in variants),
        }
        (tmp / PARITY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out_dir=final, record=record)


def export_onnx(classifier: StudentClassifier, path: Path,
                opset: int = ExportConfig().opset) -> None:
    """Trace the PyTorch model into ONNX with dynamic batch and sequence axes."""
    import torch

    model = classifier.model
    tok = classifier.tokenizer
    # ONNX inputs follow forward()'s parameter order, whatever the order of the kwargs
    params = inspect.signature(model.forward).parameters
    names = [n for n in params if n in tok.model_input_names]
    # Two texts of different lengths: the traced graph takes the padded (general) mask path.
    example = tok(["a short one", "a somewhat longer example text to pad against"],
                  padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about the legacy path
        torch.onnx.export(model.eval(), (), str(path), kwargs={n: example[n] for n in names},
                          input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=opset, do_constant_folding=True, dynamo=False)


def quantize_int8(src: Path, dst: Path, per_channel: bool = True,
                  reduce_range: bool = False) -> None:
    """Dynamic int8 quantization of the MatMul/Gemm weights (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range)
