"""ONNX export of a trained student, int8 quantization, and the parity check on both.

`export_student` writes `DIR/onnx/` (model.onnx, optionally model.int8.onnx, parity.json) all or
nothing: everything is built in a temporary folder next to it and renamed into place. Each file
is run on the parity texts and compared with the PyTorch model: label agreement (also on the
confident texts, whose top-2 probabilities are not near a tie), the largest probability
difference, and accuracy where the texts have gold labels. A file below the configured agreement
is kept for inspection but marked `passed: false`, so that `StudentClassifier.load` (and with it
`predict` and `serve`) never runs it.

int8 (`quantize_int8`), as measured on MiniLM in bench/quantize.py: the graph is pre-processed
(`quant_pre_process`); every MatMul input whose few largest channels dwarf the rest (MiniLM's
FFN inputs: one LayerNorm channel near 30 where the median is 2) is split, on calibration
texts from the training data (never the parity texts): those channels go through a small fp32
MatMul beside the int8 one, which then quantizes only ordinary values. Then the weight MatMuls
are quantized, dynamically (activation scales per batch) or statically (QDQ, scales from the
calibration); activation × activation MatMuls and the pooler/classifier Gemms stay fp32.

Students of the non-transformer kinds (tfidf, model2vec) run in numpy: for them there is nothing
to export, and `export_student` says so without writing anything.

A multi-label student agrees on a text when the file gives it the same label set as PyTorch at
the record's thresholds (`task.decide_matrix`), and its accuracy on gold is exact-set accuracy;
a windowed student runs its windows through both the same way (`StudentClassifier`).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmdistill import __version__
from llmdistill.config import DataConfig, ExportConfig
from llmdistill.errors import UsageError
from llmdistill.files import atomic_dir
from llmdistill.student.predict import (
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    PARITY_FILE,
    StudentClassifier,
    check_model_folder,
    onnx_session,
    weights_fingerprint,
)
from llmdistill.student.record import StudentRecord
from llmdistill.student.zoo import TRANSFORMERS
from llmdistill.tasks import get_task
from llmdistill.tasks.multi_label import check_thresholds

logger = logging.getLogger(__name__)

# what int8 quantizes: the MatMuls. Gemm (pooler, classifier: one row per text) and the
# embedding Gathers stay fp32 (quantized embedding tables cost MiniLM a third more error for
# size alone: bench/quantize.py)
QUANTIZED_OPS = ["MatMul"]
_CALIBRATION_BATCH = 32
_CALIBRATORS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


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
    confident_agreement: float | None = None  # on texts with PyTorch's top-2 margin ≥ the cut
    confident_texts: int | None = None
    quantization: dict[str, Any] | None = None  # int8: method, calibration, split, fp32 nodes
    runtime: str = "onnxruntime"  # what ran the file: onnxruntime or openvino


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

    @property
    def nothing_to_export(self) -> bool:
        """True for a student kind that runs without ONNX (nothing was written)."""
        return bool(self.record.get("nothing_to_export"))


@dataclass
class Calibration:
    """Training texts that calibrate int8, tokenized as the student tokenizes."""

    data: str
    texts: int
    dropped_parity_overlap: int
    batches: list[dict[str, np.ndarray]]  # length-sorted, each padded to its longest text
    fixed: list[dict[str, np.ndarray]] = field(default_factory=list)  # all one width

    def describe(self) -> dict[str, Any]:
        return {"data": self.data, "texts": self.texts,
                "dropped_parity_overlap": self.dropped_parity_overlap}


def parity(reference: np.ndarray, candidate: np.ndarray, gold: list[str] | None,
           labels: list[str], min_agreement: float,
           margin: float = ExportConfig().confident_margin, *, task: str = "single_label",
           thresholds: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement of `candidate` with `reference` probabilities, and both accuracies on gold.

    `confident_agreement` counts only texts whose two most probable labels (by `reference`)
    differ by at least `margin`: near-ties flip at the smallest numerical change. Multi-label
    `task`: a text agrees when both give it the same label set at `thresholds`; confident texts
    have every label's probability at least margin / 2 from its threshold (the binary form of a
    top-2 gap), and accuracy is exact-set accuracy on canonical gold strings.
    """
    if reference.shape != candidate.shape or not len(reference):
        raise UsageError(f"parity needs two non-empty probability arrays of one shape (got "
                         f"{reference.shape} and {candidate.shape})")
    if not get_task(task).exclusive:
        return _set_parity(reference, candidate, gold, labels, min_agreement, margin,
                           get_task(task), thresholds)
    ref_pred, cand_pred = reference.argmax(axis=1), candidate.argmax(axis=1)
    same = ref_pred == cand_pred
    agreement = float(np.mean(same))
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    confident = (top2[:, 1] - top2[:, 0] >= margin) if top2 is not None \
        else np.ones(len(reference), dtype=bool)
    out: dict[str, Any] = {"agreement": agreement,
                           "max_abs_prob_diff": float(np.abs(reference - candidate).max()),
                           "confident_agreement": (float(np.mean(same[confident]))
                                                   if confident.any() else None),
                           "confident_texts": int(confident.sum()),
                           "accuracy": None, "reference_accuracy": None, "accuracy_change": None,
                           "passed": agreement >= min_agreement}
    if gold is not None:
        index = {lab: i for i, lab in enumerate(labels)}
        g = np.array([index.get(x, -1) for x in gold])
        out["reference_accuracy"] = float(np.mean(ref_pred == g))
        out["accuracy"] = float(np.mean(cand_pred == g))
        out["accuracy_change"] = 100 * (out["accuracy"] - out["reference_accuracy"])
    return out


def _set_parity(reference: np.ndarray, candidate: np.ndarray, gold: list[str] | None,
                labels: list[str], min_agreement: float, margin: float, task: Any,
                thresholds: np.ndarray | None) -> dict[str, Any]:
    """`parity` for a multi-label student: label sets, not argmaxes."""
    ref_sets = task.decide_matrix(reference, thresholds)
    cand_sets = task.decide_matrix(candidate, thresholds)
    same = (ref_sets == cand_sets).all(axis=1)
    agreement = float(np.mean(same))
    t = check_thresholds(thresholds, reference.shape[1])
    confident = (np.abs(reference - t[None, :]) >= margin / 2).all(axis=1)
    out: dict[str, Any] = {"agreement": agreement,
                           "max_abs_prob_diff": float(np.abs(reference - candidate).max()),
                           "confident_agreement": (float(np.mean(same[confident]))
                                                   if confident.any() else None),
                           "confident_texts": int(confident.sum()),
                           "accuracy": None, "reference_accuracy": None, "accuracy_change": None,
                           "passed": agreement >= min_agreement}
    if gold is not None:
        g = task.targets([str(x) for x in gold], labels) > 0.5
        out["reference_accuracy"] = float(np.mean((ref_sets == g).all(axis=1)))
        out["accuracy"] = float(np.mean((cand_sets == g).all(axis=1)))
        out["accuracy_change"] = 100 * (out["accuracy"] - out["reference_accuracy"])
    return out


def export_student(
    model_dir: str | Path,
    texts: list[str],
    gold: list[str] | None = None,
    cfg: ExportConfig | None = None,
    int8: bool | None = None,
    data_name: str = "",
    calibration_texts: list[str] | None = None,
) -> ExportResult:
    """Export `model_dir` to ONNX (and int8), check parity on `texts`, write `DIR/onnx/`.

    `gold` (labels of `texts`, optional) adds accuracies; `int8` overrides `cfg.int8`;
    `calibration_texts` (training texts) replace `cfg.calibration_data` for int8. Returns the
    record also written to parity.json; `result.passed` is False when a file missed
    `cfg.min_agreement` (the files stay, marked failed, and are never used). A tfidf/model2vec
    folder gives `result.nothing_to_export` and writes nothing.
    """
    cfg = cfg or ExportConfig()
    int8 = cfg.int8 if int8 is None else int8
    model_dir = Path(model_dir)
    record = StudentRecord.load_if_present(model_dir) if model_dir.is_dir() else None
    if record is not None and record.kind != TRANSFORMERS:
        return ExportResult(out_dir=model_dir, record={
            "nothing_to_export": True, "kind": record.kind, "labels": record.labels,
            "reason": f"a {record.kind} student runs in numpy without ONNX: nothing to export",
            "variants": [], "passed": True})
    check_model_folder(model_dir)
    texts = [str(t) for t in texts]
    if cfg.max_texts is not None and len(texts) > cfg.max_texts:
        texts, gold = texts[: cfg.max_texts], (gold[: cfg.max_texts] if gold else gold)
    if not texts:
        raise UsageError("no parity texts: pass --data with at least one text")
    reference = StudentClassifier.load(model_dir, backend="torch")
    labels = reference.labels
    task = get_task(reference.task)
    given = set(gold or []) if task.exclusive else {
        lab for g in (gold or []) for lab in task.split(str(g))}
    if gold is not None and not given <= set(labels):
        bad = sorted(given - set(labels))[:5]
        raise UsageError(f"the parity data's labels {bad} are not the student's {labels}: "
                         "pass --data with the student's label set")
    calibration = None
    if int8:
        calibration = calibrate_on(reference, cfg, texts, calibration_texts)
    final = model_dir / ONNX_DIR
    with atomic_dir(final) as tmp:
        t0 = time.perf_counter()
        export_onnx(reference, tmp / FP32_FILE, cfg.opset)
        files = [(FP32_FILE, "fp32", None)]
        if int8:
            info = quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE, cfg, calibration)
            files.append((INT8_FILE, "int8", info or None))
        export_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_probs = reference.predict_proba(texts, batch_size=cfg.batch_size)
        ref_seconds = time.perf_counter() - t0
        variants = []
        runtimes = ["onnxruntime", "openvino"] if cfg.openvino else ["onnxruntime"]
        for (name, precision, info), runtime in itertools.product(files, runtimes):
            clf = StudentClassifier.load_onnx(model_dir, tmp / name, None, reference.parameters,
                                              runtime=runtime)
            t0 = time.perf_counter()
            probs = clf.predict_proba(texts, batch_size=cfg.batch_size)
            seconds = time.perf_counter() - t0
            p = parity(ref_probs, probs, gold, labels, cfg.min_agreement, cfg.confident_margin,
                       task=task.name, thresholds=reference.thresholds)
            variants.append(asdict(VariantParity(
                file=name, precision=precision, agreement=p["agreement"],
                max_abs_prob_diff=p["max_abs_prob_diff"], accuracy=p["accuracy"],
                accuracy_change=p["accuracy_change"], passed=p["passed"],
                bytes=(tmp / name).stat().st_size, seconds=seconds,
                confident_agreement=p["confident_agreement"],
                confident_texts=p["confident_texts"], quantization=info, runtime=runtime)))
        record = {
            "llmdistill_version": __version__,
            "weights_sha256": weights_fingerprint(model_dir),
            "labels": labels,
            "parameters": reference.parameters,
            "data": data_name,
            "texts": len(texts),
            "gold": gold is not None,
            "threshold": cfg.min_agreement,
            "torch_accuracy": _accuracy(reference, ref_probs, gold),
            "torch_seconds": ref_seconds,
            "export_seconds": export_seconds,
            "settings": cfg.model_dump(mode="json") | {"int8": int8},
            **({} if task.exclusive else {"task": task.name, "thresholds": (
                None if reference.thresholds is None
                else [float(t) for t in reference.thresholds])}),
            "variants": variants,
            "passed": all(v["passed"] for v in variants),
        }
        (tmp / PARITY_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out_dir=final, record=record)


def _accuracy(reference: StudentClassifier, probs: np.ndarray,
              gold: list[str] | None) -> float | None:
    """PyTorch's accuracy on the parity gold: its label (single-label) or exact label set."""
    if gold is None:
        return None
    task = get_task(reference.task)
    if task.exclusive:
        return float(np.mean(np.array(reference.labels)[probs.argmax(1)] == np.array(gold)))
    chosen = task.decide_matrix(probs, reference.thresholds)
    g = task.targets([str(x) for x in gold], reference.labels) > 0.5
    return float(np.mean((chosen == g).all(axis=1)))


def calibrate_on(classifier: StudentClassifier, cfg: ExportConfig, parity_texts: list[str],
                 texts: list[str] | None = None) -> Calibration:
    """Up to `cfg.calibration_size` training texts (`texts`, else `cfg.calibration_data`),
    minus any parity text, tokenized and batched for the ONNX graph."""
    from llmdistill.data import clean_text, resolve

    name = "given texts"
    if texts is None:
        name = cfg.calibration_data
        frame, _ = resolve(cfg.calibration_data, DataConfig(max_train=None))
        texts = frame["text"].astype(str).tolist()
    held_out = {clean_text(t) for t in parity_texts}
    cleaned = list(dict.fromkeys(clean_text(str(t)) for t in texts))
    kept = [t for t in cleaned if t and t not in held_out]
    dropped = sum(1 for t in cleaned if t and t in held_out)
    if not kept:
        raise UsageError(f"no calibration texts left from {name} once the parity texts are "
                         "removed: set export.calibration_data to the student's training data")
    if len(kept) > cfg.calibration_size:  # a seeded sample, the same texts every export
        pick = np.random.default_rng(0).choice(len(kept), cfg.calibration_size, replace=False)
        kept = [kept[i] for i in sorted(pick)]
    tok = classifier.tokenizer
    lengths = [len(ids) for ids in tok(kept, truncation=True,
                                       max_length=classifier.max_length)["input_ids"]]
    kept = [kept[i] for i in np.argsort(lengths, kind="stable")]
    width = max(lengths)

    def encode(chunk: list[str], padding: str | bool) -> dict[str, np.ndarray]:
        enc = tok(chunk, truncation=True, max_length=width, padding=padding,
                  return_tensors="np")
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}

    chunks = [kept[i:i + _CALIBRATION_BATCH] for i in range(0, len(kept), _CALIBRATION_BATCH)]
    return Calibration(data=name, texts=len(kept), dropped_parity_overlap=dropped,
                       batches=[encode(c, True) for c in chunks],
                       fixed=[encode(c, "max_length") for c in chunks])


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


def quantize_int8(src: Path, dst: Path, cfg: ExportConfig | None = None,
                  calibration: Calibration | None = None) -> dict[str, Any]:
    """Write the int8 model of `src` to `dst` as `cfg` says; returns what was done (parity.json).

    Pre-processing, then (with `cfg.outlier_channels`) the outlier-channel split measured on
    `calibration`, then dynamic or static (QDQ, per-channel weights) quantization of the
    weight MatMuls; the nodes `int8_fp32_nodes` names stay fp32.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    cfg = cfg or ExportConfig()
    if (cfg.outlier_channels or cfg.int8_method == "static") and calibration is None:
        raise UsageError("int8 with outlier channels or static scales needs calibration texts: "
                         "set export.calibration_data to training texts")
    info: dict[str, Any] = {"method": cfg.int8_method, "per_channel": cfg.per_channel,
                            "reduce_range": cfg.reduce_range}
    with tempfile.TemporaryDirectory(prefix="llmdistill-int8-") as scratch:
        pre = Path(scratch) / "pre.onnx"
        preprocess(src, pre)
        model = onnx.load(str(pre))
        split_paths: list[str] = []
        if cfg.outlier_channels:
            groups = matmul_inputs(model)
            absmax = activation_absmax(pre, list(groups), calibration.batches, Path(scratch))
            split_paths, split_inputs = split_outlier_channels(
                model, groups, absmax, cfg.outlier_channels, cfg.outlier_ratio)
            onnx.save(model, str(pre))
            info["outlier_split"] = {"channels": cfg.outlier_channels, "ratio": cfg.outlier_ratio,
                                     "inputs": len(split_inputs), "fp32_matmuls": len(split_paths)}
        keep = int8_fp32_nodes(model, cfg.int8_exclude)
        info["fp32_nodes"] = keep
        info["int8_nodes"] = sum(1 for n in model.graph.node if n.op_type in QUANTIZED_OPS
                                 and n.name not in keep and n.name not in split_paths)
        if calibration is not None:
            info["calibration"] = calibration.describe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cfg.int8_method == "dynamic":
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8,
                                 per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                                 op_types_to_quantize=QUANTIZED_OPS,
                                 nodes_to_exclude=keep + split_paths)
            else:
                info["calibration"] |= {"calibrator": cfg.calibrator,
                                        "activation_type": cfg.activation_type}
                batches = calibration.batches if cfg.calibrator == "minmax" else calibration.fixed
                act = QuantType.QUInt8 if cfg.activation_type == "uint8" else QuantType.QInt8
                quantize_static(
                    str(pre), str(dst), _Reader(batches, {i.name for i in model.graph.input}),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
                    per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                    activation_type=act, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep + split_paths,
                    calibrate_method=getattr(CalibrationMethod, _CALIBRATORS[cfg.calibrator]),
                    extra_options={"ActivationSymmetric": cfg.activation_type == "int8",
                                   "MatMulConstBOnly": True})
    return info


def preprocess(src: Path, dst: Path) -> None:
    """ONNX Runtime's pre-quantization pass: shape inference and basic graph optimization.

    (Symbolic shape inference is skipped: it cannot follow the traced attention-mask subgraph,
    and ONNX's own shape inference gives the quantizer what it needs.)
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def matmul_inputs(model: Any) -> dict[str, list[Any]]:
    """Activation tensor → the MatMuls that multiply it by a 2-D float weight of their own."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list[Any]] = {}
    for n in model.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if (w is not None and len(w.dims) == 2 and w.data_type == TensorProto.FLOAT
                and uses[w.name] == 1 and n.input[0] not in inits):
            groups.setdefault(n.input[0], []).append(n)
    return groups


def activation_absmax(model_path: Path, tensors: list[str], batches: list[dict[str, np.ndarray]],
                      scratch: Path) -> dict[str, np.ndarray]:
    """Per channel (last axis), the largest |value| of each tensor over the calibration batches'
    real tokens (padding excluded)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    outputs = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    path = scratch / "absmax.onnx"
    onnx.save(model, str(path))
    session = onnx_session(path)
    names = {i.name for i in session.get_inputs()}
    out: dict[str, np.ndarray] = {}
    for batch in batches:
        values = session.run(tensors, {k: v for k, v in batch.items() if k in names})
        mask = batch.get("attention_mask")
        for t, v in zip(tensors, values, strict=True):
            if mask is not None and v.ndim == 3 and v.shape[:2] == mask.shape:
                v = v[mask.astype(bool)]
            cur = np.abs(v.reshape(-1, v.shape[-1])).max(axis=0)
            out[t] = np.maximum(out[t], cur) if t in out else cur
    path.unlink()
    return out


def split_outlier_channels(model: Any, groups: dict[str, list[Any]],
                           absmax: dict[str, np.ndarray], channels: int,
                           ratio: float) -> tuple[list[str], list[str]]:
    """Rewrite x @ W as (x·mask) @ W_in + x[..., O] @ W[O] where x's channels O are outliers.

    O: the `channels` channels with the largest calibration |x|, for inputs whose largest is at
    least `ratio` × the median channel's. The int8 MatMul then sees x without them (and W_in
    without their rows); the small fp32 MatMul adds them back, after the bias Add so that ONNX
    Runtime still fuses MatMul and bias. Exact in fp32. Returns the new fp32 MatMuls' names
    and the split inputs.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    fp32, split = [], []
    for x, nodes in groups.items():
        amax = absmax[x]
        if channels >= amax.size // 2 or amax.max() < ratio * max(float(np.median(amax)), 1e-12):
            continue
        tag = f"llmdistill_split{len(split)}"
        outliers = np.sort(np.argsort(-amax)[:channels]).astype(np.int64)
        mask = np.ones(amax.size, dtype=np.float32)
        mask[outliers] = 0.0
        model.graph.initializer.extend([numpy_helper.from_array(mask, f"{tag}_mask"),
                                        numpy_helper.from_array(outliers, f"{tag}_channels")])
        before[nodes[0].name] = [
            helper.make_node("Mul", [x, f"{tag}_mask"], [f"{tag}_inliers"], name=f"{tag}_Mul"),
            helper.make_node("Gather", [x, f"{tag}_channels"], [f"{tag}_outliers"], axis=-1,
                             name=f"{tag}_Gather")]
        for j, n in enumerate(nodes):
            w = numpy_helper.to_array(inits[n.input[1]]).copy()
            rows = w[outliers].copy()
            w[outliers] = 0.0
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
            model.graph.initializer.append(numpy_helper.from_array(rows, f"{tag}_{j}_rows"))
            n.input[0] = f"{tag}_inliers"
            anchor = n
            cs = consumers.get(n.output[0], [])
            if (len(cs) == 1 and cs[0].op_type == "Add" and n.output[0] not in graph_outputs
                    and any(i in inits for i in cs[0].input)):
                anchor = cs[0]  # the bias Add
            y = anchor.output[0]
            anchor.output[0] = f"{tag}_{j}_inlier_part"
            after[anchor.name] = [
                helper.make_node("MatMul", [f"{tag}_outliers", f"{tag}_{j}_rows"],
                                 [f"{tag}_{j}_outlier_part"], name=f"{tag}_{j}_MatMul"),
                helper.make_node("Add", [f"{tag}_{j}_inlier_part", f"{tag}_{j}_outlier_part"],
                                 [y], name=f"{tag}_{j}_Add")]
            fp32.append(f"{tag}_{j}_MatMul")
        split.append(x)
    order = []
    for n in model.graph.node:
        order.extend(before.get(n.name, []))
        order.append(n)
        order.extend(after.get(n.name, []))
    del model.graph.node[:]
    model.graph.node.extend(order)
    return fp32, split


def int8_fp32_nodes(model: Any, exclude: str | list[str]) -> list[str]:
    """The quantizable nodes kept fp32: activation × activation MatMuls (attention scores),
    plus, for a list, every MatMul whose name contains one of its strings."""
    inits = {i.name for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    keep = [n.name for n in nodes if n.op_type == "MatMul" and not set(n.input) & inits]
    if exclude == "auto":
        return keep
    for pattern in exclude:
        hits = [n.name for n in nodes if pattern in n.name]
        if not hits:
            raise UsageError(f"export.int8_exclude {pattern!r} matches no MatMul of "
                             "the graph: use part of a node name (e.g. 'layer.0/') or 'auto'")
        keep += [h for h in hits if h not in keep]
    return keep


class _Reader:
    """ONNX Runtime's calibration reader over prepared batches (only the graph's inputs)."""

    def __init__(self, batches: list[dict[str, np.ndarray]], names: set[str]) -> None:
        self._it = iter([{k: v for k, v in b.items() if k in names} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)
