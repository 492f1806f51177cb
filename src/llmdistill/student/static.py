"""The `model2vec` student: static token embeddings (Model2Vec), mean-pooled and normalised,
into the soft-label logistic-regression head (`student/heads.py`).

`student.model: model2vec` distils `student.static.base` (default minilm-l6); `model2vec:BASE`
names the base instead. A base that is an encoder folder is distilled with
`model2vec.distill.distill` (one forward pass per vocabulary token, PCA to
`student.static.pca_dims`); a base that is already a Model2Vec folder is used as it is (so is a
trained model2vec student's folder; `pca_dims` applies only when distilling). Only local
folders and embedded names: nothing is downloaded. Texts are truncated at the static model's
own max_length (Model2Vec's 512 tokens), not `student.max_length`: a bag of embeddings costs
little per token. The student folder is itself a Model2Vec model (config.json, model.safetensors,
tokenizer.json, modules.json) plus head.safetensors, README.md and llmdistill.json.

Prediction: one batched tokenizer call, then a sparse (texts × vocabulary) averaging matrix
times the embedding table, so no Python loop runs per token.
"""

from __future__ import annotations

import json
import logging
import time
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from llmdistill.assets import ASSETS, student_path
from llmdistill.config import StudentConfig
from llmdistill.errors import UsageError
from llmdistill.student.heads import (
    HEAD_FILE,
    HeadClassifier,
    LinearHead,
    limit_threads,
    load_record,
    train_head_student,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from llmdistill.student.targets import TrainResult

KIND = "model2vec"
BACKEND = "numpy-model2vec"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_NOT_ENCODERS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")
_INSTALL = "pip install model2vec skeletoken (or 'llmdistill[zoo]')"


def base_name(cfg: StudentConfig) -> str:
    """The base a `model2vec[:BASE]` student starts from: BASE, else `student.static.base`."""
    _, colon, arg = cfg.model.partition(":")
    if colon and not arg.strip():
        raise UsageError(f"student.model {cfg.model!r} names no base after the colon: use "
                         "model2vec (the configured static.base) or model2vec:FOLDER")
    return arg.strip() or cfg.static.base


def inspect_base(base: str) -> tuple[Path, bool]:
    """The base's folder and whether it is a Model2Vec model (True) or an encoder to distil.

    Refused with a one-line UsageError: a missing path or unknown name, a file, a folder with
    no config.json, a decoder or encoder-decoder model.
    """
    path = Path(student_path(base))
    fix = ("use minilm-l6, a local encoder folder (config.json and a fast tokenizer, e.g. a "
           "BERT), or a Model2Vec folder; hub ids are not downloaded")
    if not path.exists():
        raise UsageError(f"the model2vec base {base!r} is not a folder or an embedded model: "
                         f"{fix}")
    if not path.is_dir():
        raise UsageError(f"the model2vec base {path} is a file, not a model folder: {fix}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(f"the model2vec base {path} has no config.json: it is neither an "
                         f"encoder nor a Model2Vec folder; {fix}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{config_path} is unreadable ({type(e).__name__}): {fix}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_path} is not a model config: {fix}")
    if config.get("model_type") == "model2vec":
        return path, True
    archs = [str(a) for a in config.get("architectures") or []]
    if config.get("is_decoder") or config.get("is_encoder_decoder") or any(
            a.endswith(_NOT_ENCODERS) for a in archs):
        raise UsageError(f"the model2vec base {path} is a {', '.join(archs) or 'decoder'} "
                         "model, not an encoder: distil an encoder such as minilm-l6 (or "
                         "another BERT-like folder)")
    return path, False


def static_model(cfg: StudentConfig, base: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The StaticModel for `base` (default: the one `cfg` names) and a record of its origin:
    loaded as it is from a Model2Vec folder, or distilled from an encoder folder."""
    base = base or base_name(cfg)
    path, is_static = inspect_base(base)
    start = time.perf_counter()
    if is_static:
        model = _load_static(path)
        source = "model2vec folder"
    else:
        model = _distill(path, base, cfg)
        source = "distilled"
    info = {"source": source, "base": base, "vocabulary": int(len(model.tokens)),
            "dim": int(model.dim), "pca_dims": cfg.static.pca_dims if not is_static else None,
            "seconds": round(time.perf_counter() - start, 2),
            "model2vec_version": _version("model2vec")}
    return model, info


def _distill(path: Path, base: str, cfg: StudentConfig) -> Any:
    """`model2vec.distill.distill` on a local encoder folder, on `cfg.threads` torch threads."""
    try:
        import torch
        from model2vec.distill import distill
    except ImportError as e:
        raise UsageError(f"distilling a model2vec student needs model2vec's distill module "
                         f"({e.name} is missing): {_INSTALL}") from None
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    logger.info("distilling static embeddings from %s (one forward pass per token)", path)
    try:
        return distill(model_name=str(path), pca_dims=cfg.static.pca_dims)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"model2vec cannot distil {base!r} ({first}): give an encoder folder "
                         "with a fast tokenizer, such as minilm-l6") from None
    finally:
        torch.set_num_threads(threads)


def _load_static(path: Path) -> Any:
    """A Model2Vec folder as a StaticModel (local files only)."""
    try:
        from model2vec import StaticModel
    except ImportError:
        raise UsageError(f"model2vec is not installed: {_INSTALL}") from None
    try:
        return StaticModel.from_pretrained(path, force_download=False)
    except Exception as e:  # model2vec, safetensors and tokenizers raise their own types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"cannot load the Model2Vec model in {path} ({first}): retrain the "
                         "student or give a complete Model2Vec folder") from None


class StaticFeatures:
    """Mean-pooled (and, as the model says, normalised) static embeddings of each text."""

    def __init__(self, model: Any, info: dict[str, Any], base_model: str | None = None) -> None:
        self.model = model
        self.info = info
        self.base_model = base_model
        table = np.asarray(model.embedding, dtype=np.float32)
        if model.token_mapping is not None:  # vocabulary-quantized: token id → shared row
            table = table[np.asarray(model.token_mapping)]
        if model.weights is not None:
            table = table * np.asarray(model.weights, dtype=np.float32)[:, None]
        self.table = np.ascontiguousarray(table)  # (tokens, dim): token id → its vector
        self.normalize = bool(model.normalize)

    @property
    def parameters(self) -> int:
        extra = 0 if self.model.weights is None else int(np.asarray(self.model.weights).size)
        return int(np.asarray(self.model.embedding).size + extra)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def transform(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32: the mean of each text's token vectors (no specials, unknown tokens
        dropped, truncated at the model's max_length), as `StaticModel.encode` computes it."""
        n = len(texts)
        encodings = self.model.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=n)
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        if self.model.unk_token_id is not None:  # dropped, as StaticModel.tokenize does
            keep = flat != self.model.unk_token_id
            lengths = np.bincount(np.repeat(np.arange(n), lengths)[keep], minlength=n)
            flat = flat[keep]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
        pool = sp.csr_matrix((weights, flat, indptr), shape=(n, len(self.table)))
        out = np.asarray(pool @ self.table, dtype=np.float32)
        if self.normalize:
            out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-32
        return out

    def save(self, folder: Path) -> None:
        """The Model2Vec files (config.json, model.safetensors, tokenizer.json, modules.json)."""
        from model2vec.persistence import save_pretrained

        m = self.model
        save_pretrained(folder_path=Path(folder), embeddings=m.embedding, tokenizer=m.tokenizer,
                        config=m.config, create_model_card=False, weights=m.weights,
                        mapping=m.token_mapping)


def train(train: pd.DataFrame, validation: pd.DataFrame, labels: list[str], cfg: StudentConfig,
          out_dir: Path, manifest: dict | None = None, *, anchor: pd.DataFrame | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train the model2vec student into `out_dir` (see `heads.train_head_student` for the
    result's fields: best_epoch is the 1-based position of the chosen C in `student.head_c`;
    train_seconds includes the distillation). The head fits z-scored embeddings, folded back
    into its weights."""
    base = base_name(cfg)
    inspect_base(base)  # a bad base is refused before any data work or distillation
    embedded = ASSETS.get(base)
    described = embedded.description if embedded and embedded.kind == "student" else base

    def make_features(_texts: list[str]) -> StaticFeatures:
        model, info = static_model(cfg, base)
        return StaticFeatures(model, info, base_model=described)

    return train_head_student(KIND, make_features, train, validation, labels, cfg, out_dir,
                              manifest, anchor=anchor, overwrite=overwrite, standardise=True)


def load(model_dir: str | Path, threads: int | None = None) -> HeadClassifier:
    """A trained model2vec folder as a classifier (`predict_proba`, `predict`, `labels`, ...)."""
    model_dir = Path(model_dir)
    record = load_record(model_dir, KIND, [*MODEL_FILES, HEAD_FILE])
    limit_threads(threads)
    features = StaticFeatures(_load_static(model_dir), record.model_extra.get("features", {})
                              if record.model_extra else {})
    head = LinearHead.load(model_dir, record.labels, dim=features.dim)
    return HeadClassifier(record.labels, features, head, BACKEND,
                          max_length=features.model.max_length, task=record.task,
                          thresholds=record.threshold_array)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
