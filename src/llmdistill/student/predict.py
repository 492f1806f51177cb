"""Batch inference with a trained student folder (any HF sequence-classification folder).

Backends behind one class: PyTorch, and an ONNX runtime when `llmdistill export` wrote
`DIR/onnx/model(.int8).onnx` and that file passed its parity check against PyTorch on that
runtime (recorded in `DIR/onnx/parity.json`, together with a fingerprint of the weights it was
exported from, so a retrained folder never runs a stale export). The runtimes are ONNX Runtime
(`onnx`, the default) and OpenVINO (`openvino`: the same files, checked on OpenVINO at export
with `--openvino`; bench/runtimes.py measures which is faster on a CPU). Either way texts are
tokenized once, sorted by length and batched, so that little padding is computed.

The folder's record says the task (`task`, `thresholds`: a softmax and the argmax, or a sigmoid
per label and its threshold) and how long texts are read (`long_text: windows`: each text's
windows run as ordinary texts on either backend and their logits pool per text).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tqdm.auto import tqdm

from llmdistill.config import StudentConfig
from llmdistill.data import clean_text
from llmdistill.errors import UsageError
from llmdistill.files import atomic_path, refuse_existing
from llmdistill.student.record import StudentRecord
from llmdistill.student.windows import Windowing, pool_logits, split_windows
from llmdistill.student.zoo import TRANSFORMERS, kind_module
from llmdistill.tasks import SEP, get_task
from llmdistill.tasks.base import sigmoid

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PARITY_FILE = "parity.json"
Backend = Literal["auto", "torch", "onnx", "openvino"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Runtime = Literal["onnxruntime", "openvino"]
RUNTIME_OF_BACKEND: dict[str, Runtime] = {"onnx": "onnxruntime", "openvino": "openvino"}
_BATCH = StudentConfig().inference_batch_size


class StudentClassifier:
    """A loaded student: texts in, label probabilities out, on CPU unless told otherwise.

    `backend` says what runs: "torch", "onnx-fp32", "onnx-int8", "openvino-fp32" or
    "openvino-int8". `load` returns the zoo's own classifier for a tfidf or model2vec folder
    (same attributes and methods). `task` names the task type (llmdistill.tasks), `thresholds`
    are multi-label's per-label thresholds (None: the task's default), `windowing` how texts
    longer than `max_length` are read (None: truncated).
    """

    def __init__(self, model, tokenizer, max_length: int, device: str = "cpu", *,
                 task: str = "single_label", thresholds: np.ndarray | None = None,
                 windowing: Windowing | None = None) -> None:
        import torch

        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.backend = "torch"
        self.onnx_path: Path | None = None
        id2label = model.config.id2label
        self.labels: list[str] = [str(id2label[i]) for i in range(model.config.num_labels)]
        self.parameters: int = sum(p.numel() for p in model.parameters())
        self.task: str = get_task(task).name
        self.thresholds: np.ndarray | None = thresholds
        self.windowing: Windowing | None = windowing

        def run(batch: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                feed = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
                return self.model(**feed).logits.float().cpu().numpy()

        self._run: Callable[[dict[str, np.ndarray]], np.ndarray] = run

    @classmethod
    def load(
        cls, model_dir: str | Path, threads: int | None = None, device: str = "cpu",
        backend: Backend = "auto",
    ) -> StudentClassifier:
        """Load a model folder; `threads` sets the CPU thread count (torch's is process-wide).

        backend "auto" runs the fastest ONNX export that passed parity on ONNX Runtime (int8
        before fp32) and falls back to PyTorch; "onnx" requires such an export; "openvino" runs
        an export that passed parity on OpenVINO (`llmdistill export --openvino`); "torch"
        never uses one.
        """
        model_dir = Path(model_dir)
        check_backend(backend)
        record = StudentRecord.load_if_present(model_dir) if model_dir.is_dir() else None
        if record is not None and record.kind != TRANSFORMERS:
            if backend in RUNTIME_OF_BACKEND:
                raise UsageError(f"{model_dir} is a {record.kind} student, which runs in numpy "
                                 "without ONNX: use --backend auto")
            return kind_module(record.kind).load(model_dir, threads)
        check_model_folder(model_dir)
        if backend != "torch" and device == "cpu":
            choice, runtime, why = export_for(model_dir, backend)
            if choice is not None:
                return cls.load_onnx(model_dir, choice, threads, runtime=runtime)
            if why != "no export":
                logger.warning("not using the ONNX export in %s: %s", model_dir, why)
        return cls._load_torch(model_dir, threads, device)

    @classmethod
    def _load_torch(cls, model_dir: Path, threads: int | None, device: str) -> StudentClassifier:
        import torch
        from transformers import AutoModelForSequenceClassification

        if threads:
            torch.set_num_threads(threads)
        tokenizer = _tokenizer(model_dir)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            raise UsageError(
                f"cannot load the student model folder {model_dir} ({e}): "
                "give the folder that training wrote"
            ) from None
        max_length = _max_length(model_dir, model.config, tokenizer)
        task, thresholds, windowing = decision_of(model_dir, model.config, max_length)
        return cls(model, tokenizer, max_length, device, task=task, thresholds=thresholds,
                   windowing=windowing)

    @classmethod
    def load_onnx(cls, model_dir: Path, onnx_path: Path, threads: int | None = None,
                  parameters: int | None = None,
                  runtime: Runtime = "onnxruntime") -> StudentClassifier:
        """Run one ONNX file of `model_dir` with its tokenizer on `runtime`, whether or not it
        passed parity.

        For the parity check itself and for benchmarks that compare fp32 with int8; `load`
        is the way to pick the export that passed.
        """
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model_dir))
        tokenizer = _tokenizer(model_dir)
        run = (openvino_runner if runtime == "openvino" else onnx_runner)(onnx_path, threads)
        self = cls.__new__(cls)
        self.model = None
        self.tokenizer = tokenizer
        self.max_length = _max_length(model_dir, config, tokenizer)
        self.device = "cpu"
        self.backend = backend_name(runtime, onnx_path)
        self.onnx_path = onnx_path
        self.labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self.task, self.thresholds, self.windowing = decision_of(model_dir, config,
                                                                 self.max_length)
        if parameters is None:
            record = json.loads((onnx_path.parent / PARITY_FILE).read_text(encoding="utf-8"))
            parameters = int(record.get("parameters", 0))
        self.parameters = parameters
        self._run = run
        return self

    def predict_proba(
        self, texts: list[str], batch_size: int = _BATCH, progress: bool = False
    ) -> np.ndarray:
        """(n, n_labels) probabilities in input order: softmax rows (single-label) or one
        independent sigmoid per label (multi-label; rows need not sum to 1).

        Texts are cleaned exactly as training and the teacher saw them (`data.clean_text`),
        sorted by token length and batched so that little padding is computed, then put back
        in the caller's order.
        """
        logits = self.predict_logits(texts, batch_size=batch_size, progress=progress)
        if get_task(self.task).exclusive:
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            return probs / probs.sum(axis=1, keepdims=True)
        return sigmoid(logits)

    def predict_logits(
        self, texts: list[str], batch_size: int = _BATCH, progress: bool = False
    ) -> np.ndarray:
        """(n, n_labels) float64 logits in input order, of the cleaned texts; with windows, the
        mean or max of each text's windows' logits (what the activation then reads)."""
        texts = [clean_text(str(t)) for t in texts]
        if self.windowing is None or not texts:
            return self._logits(texts, batch_size, progress)
        windows, owner = split_windows(texts, self.tokenizer, self.windowing)
        return pool_logits(self._logits(windows, batch_size, progress), owner, len(texts),
                           self.windowing.pool)

    def _logits(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """Logits of already-cleaned texts, each truncated at max_length, in input order."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return out
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        keys = [k for k in self.tokenizer.model_input_names if k in enc]
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        starts = range(0, len(texts), batch_size)
        bar = tqdm(total=len(texts), desc="student", unit="text", disable=not progress)
        for start in starts:
            idx = order[start : start + batch_size]
            batch = self._pad({k: [enc[k][i] for i in idx] for k in keys}, int(lengths[idx].max()))
            out[idx] = self._run(batch).astype(np.float64)
            bar.update(len(idx))
        bar.close()
        return out

    def predict(self, texts: list[str], batch_size: int = _BATCH) -> list[str]:
        """Each text's answer as a canonical string: the most probable label (single-label),
        or the labels at or above their thresholds joined by `|` (multi-label)."""
        return self.decide(self.predict_proba(texts, batch_size=batch_size))

    def decide(self, probs: np.ndarray) -> list[str]:
        """Canonical answers of `predict_proba`'s (n, n_labels) probabilities."""
        return decide(probs, self.labels, self.task, self.thresholds)

    def _pad(self, features: dict[str, list[list[int]]], width: int) -> dict[str, np.ndarray]:
        """Pad to `width` as the tokenizer would (its pad id and side), as int64 arrays."""
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0,
                      "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0)}
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        out = {}
        for key, rows in features.items():
            arr = np.full((len(rows), width), pad_values.get(key, 0), dtype=np.int64)
            for r, ids in enumerate(rows):
                if left:
                    arr[r, width - len(ids):] = ids
                else:
                    arr[r, : len(ids)] = ids
            out[key] = arr
        return out


def decide(probs: np.ndarray, labels: list[str], task: str = "single_label",
           thresholds: np.ndarray | None = None) -> list[str]:
    """Canonical answers: the argmax label, or (multi-label) the labels at their thresholds."""
    if get_task(task).exclusive:
        return [labels[i] for i in np.asarray(probs).argmax(axis=1)]
    return get_task(task).decide(probs, labels, thresholds)


def decision_of(model_dir: Path, config: Any,
                max_length: int) -> tuple[str, np.ndarray | None, Windowing | None]:
    """How a folder decides: its record's task, thresholds and windowing (capped at
    `max_length`); a folder without a record is multi-label when its config's problem_type
    says so, and truncates."""
    record = StudentRecord.load_if_present(model_dir)
    if record is None:
        multi = getattr(config, "problem_type", None) == "multi_label_classification"
        return ("multi_label" if multi else "single_label"), None, None
    return (record.task, record.threshold_array,
            Windowing.from_settings(record.student_config, max_length))


def check_backend(backend: str) -> None:
    """Refuse an unknown backend name in one line that lists the known ones."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")


def export_for(model_dir: Path, backend: str) -> tuple[Path | None, Runtime, str]:
    """(the ONNX file `backend` runs or None, its runtime, why not): "auto" falls back quietly,
    "onnx" and "openvino" require a file that passed parity on their runtime (one-line error)."""
    runtime = RUNTIME_OF_BACKEND.get(backend, "onnxruntime")
    choice, why = usable_export(model_dir, runtime)
    if choice is None and backend in RUNTIME_OF_BACKEND:
        flag, on = (" --openvino", " for OpenVINO") if runtime == "openvino" else ("", "")
        raise UsageError(f"{model_dir} has no usable ONNX export{on} ({why}): run "
                         f"`llmdistill export {model_dir}{flag}` or use --backend torch")
    return choice, runtime, why


def backend_name(runtime: Runtime, onnx_path: Path) -> str:
    """What a loaded export reports as its backend: `onnx-int8`, `openvino-fp32`, ..."""
    prefix = "openvino" if runtime == "openvino" else "onnx"
    return f"{prefix}-{'int8' if onnx_path.name == INT8_FILE else 'fp32'}"


def onnx_runner(path: Path, threads: int | None = None) -> Callable[[dict], np.ndarray]:
    """batch → logits on an ONNX Runtime session of `path` (inputs it lacks are dropped)."""
    session = onnx_session(path, threads)
    names = {i.name for i in session.get_inputs()}

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], {k: v for k, v in batch.items() if k in names})[0]

    return run


def openvino_runner(path: Path, threads: int | None = None) -> Callable[[dict], np.ndarray]:
    """batch → logits on OpenVINO's CPU plugin, compiled from the same ONNX file.

    fp32 inference precision is asked for explicitly (the plugin may otherwise pick bf16 on
    CPUs that have it, which the parity check did not see); dynamic shapes, so one compiled
    model serves every batch width; one infer request, reused.
    """
    try:
        import openvino as ov
    except ImportError:
        raise UsageError("openvino is not installed: pip install 'llmdistill[openvino]'") from None
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    names = {name for port in compiled.inputs for name in port.get_names()}
    logits = compiled.output("logits")
    request = compiled.create_infer_request()

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        result = request.infer({k: v for k, v in batch.items() if k in names})
        return np.asarray(result[logits])

    return run


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimizations, `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("onnxruntime is not installed: pip install 'llmdistill[export]'") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads or 0
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def weights_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over the folder's config and weight files: which weights an export came from."""
    import hashlib

    model_dir = Path(model_dir)
    h = hashlib.sha256()
    files = sorted(f for f in model_dir.iterdir() if f.is_file() and (
        f.name == "config.json" or f.suffix in (".safetensors", ".bin")))
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def usable_export(model_dir: str | Path,
                  runtime: Runtime = "onnxruntime") -> tuple[Path | None, str]:
    """The ONNX file `runtime` would run (int8 before fp32) having passed parity on that
    runtime, or None and the reason. (A variant without `runtime` was checked on ONNX
    Runtime: parity.json files written before OpenVINO.)"""
    onnx_dir = Path(model_dir) / ONNX_DIR
    parity = onnx_dir / PARITY_FILE
    if not parity.exists():
        return None, "no export"
    try:
        record = json.loads(parity.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, f"{parity} is unreadable"
    if record.get("weights_sha256") != weights_fingerprint(model_dir):
        return None, "the export is older than the weights; export again"
    variants = {v["file"]: v for v in record.get("variants", [])
                if v.get("runtime", "onnxruntime") == runtime}
    if not variants and record.get("variants"):
        return None, f"not checked on {runtime}"
    failed = []
    for name in (INT8_FILE, FP32_FILE):
        v = variants.get(name)
        if v is None:
            continue
        if v.get("passed") and (onnx_dir / name).exists():
            return onnx_dir / name, "ok"
        failed.append(f"{name} agreement {v.get('agreement', 0):.4f} < {record.get('threshold')}")
    return None, ("failed parity: " + "; ".join(failed)) if failed else "no variant recorded"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model")


def check_model_folder(model_dir: Path) -> None:
    """Name the real problem before transformers does: no folder, no config, no tokenizer.

    (transformers reads a missing path as a hub repo id, and a folder without tokenizer files as
    a call to install sentencepiece.)
    """
    if not model_dir.exists():
        raise UsageError(f"no such student folder: {model_dir}: give the folder that "
                         "`llmdistill train` wrote")
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir} is a file, not a student folder: give the folder that "
                         "`llmdistill train` wrote")
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"{model_dir} has no config.json: it is not a model folder; give the "
                         "folder that `llmdistill train` wrote")
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise UsageError(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}"
                         ", ...): copy the tokenizer into it or retrain")


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load the tokenizer of {model_dir} ({first}): give the folder "
                         "that training wrote") from None


def _max_length(model_dir: Path, config, tokenizer) -> int:
    """The training max_length if recorded, else the StudentConfig default; never past the model."""
    cap = StudentConfig().max_length
    if (record := StudentRecord.load_if_present(model_dir)) is not None:
        cap = int(record.student_config.get("max_length", cap))
    limits = [cap, getattr(tokenizer, "model_max_length", cap)]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models offset positions by padding_idx + 1
        offset = (config.pad_token_id or 0) + 1 if config.model_type in {
            "roberta", "xlm-roberta", "camembert"} else 0
        limits.append(positions - offset)
    return int(min(limits))


OUTPUT_SUFFIXES = (".jsonl", ".csv", ".parquet")


def read_texts(source: str, text_column: str = "text", stdin: Any = None) -> Any:
    """`--input`: a CSV/JSONL/Parquet file, or "-" for one text per line on stdin.

    Returns a frame with `id` and `text`; blank stdin lines are skipped.
    """
    import sys

    import pandas as pd

    from llmdistill import data as data_mod

    if source == "-":
        lines = [line.rstrip("\r\n") for line in (stdin or sys.stdin)]
        texts = [t for t in lines if t.strip()]
        if not texts:
            raise UsageError("stdin held no texts: pipe one text per line into --input -")
        return pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts})
    return data_mod.read_table(source, text_column, None)


def check_output(out: Path) -> None:
    """Refuse an output that exists or has an unknown format, before any work is done."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"--out {out}: unknown format {out.suffix!r}: use "
                         f"{', '.join(OUTPUT_SUFFIXES)}")
    refuse_existing(out)


def prediction_records(ids: list[str], texts: list[str], probs: np.ndarray,
                       labels: list[str], *, task: str = "single_label",
                       thresholds: np.ndarray | None = None) -> list[dict]:
    """One dict per text: id, text, label and each label's probability.

    Multi-label: `label` is the canonical label-set string ("a|b", "" for none) at
    `thresholds`, and `labels` the same set as a list.
    """
    out = []
    if not get_task(task).exclusive:
        chosen = get_task(task).decide_matrix(np.asarray(probs), thresholds) if len(ids) else []
        for i, text, p, row in zip(ids, texts, probs, chosen, strict=True):
            picked = [lab for lab, c in zip(labels, row, strict=True) if c]
            out.append({"id": i, "text": text, "label": SEP.join(picked), "labels": picked,
                        "probs": {lab: round(float(x), 6)
                                  for lab, x in zip(labels, p, strict=True)}})
        return out
    for i, text, p in zip(ids, texts, probs, strict=True):
        out.append({"id": i, "text": text, "label": labels[int(p.argmax())],
                    "probs": {lab: round(float(x), 6) for lab, x in zip(labels, p, strict=True)}})
    return out


def write_predictions(records: list[dict], labels: list[str], out: Path) -> None:
    """Write predictions as JSONL (as printed), or CSV/Parquet with a prob_<label> column each."""
    import pandas as pd

    check_output(out)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".jsonl":
            with tmp.open("w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            frame = pd.DataFrame({"id": [r["id"] for r in records],
                                  "text": [r["text"] for r in records],
                                  "label": [r["label"] for r in records]})
            for lab in labels:
                frame[f"prob_{lab}"] = [r["probs"][lab] for r in records]
            if out.suffix.lower() == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
