"""What every student kind trains from: the teacher's usable rows of each split, the anchor, and
the result record a training run returns (one owner, shared by `train.py` and the zoo's kinds).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmdistill.annotate import FEATURES_COLUMN
from llmdistill.config import FeatureLossConfig, StudentConfig
from llmdistill.errors import DataError
from llmdistill.student.noise import (
    NoiseEstimate,
    estimate_multilabel_noise,
    estimate_noise,
    sample_anchor,
    with_gold_targets,
)
from llmdistill.tasks import get_task
from llmdistill.tasks.multi_label import tune_thresholds

logger = logging.getLogger(__name__)

PROB_PREFIX = "prob_"


@dataclass
class TrainResult:
    """What a training run produced and how it went."""

    model_dir: Path
    used: int
    skipped: int
    best_epoch: float
    validation_agreement: float
    samples_per_second: float
    train_seconds: float
    parameters: int
    flop_bound_samples_per_second: float = math.nan  # peak FLOP/s ÷ training FLOPs per text
    peak_gflops: float = math.nan  # fp32 matmul rate measured in-process, all ranks together
    tokens_per_text: float = math.nan  # mean unpadded tokens of a training text
    noise: dict | None = None  # anchor size, teacher confusion, the corrections applied

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the path as a string)."""
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d


@dataclass
class TeacherTargets:
    """The usable (status == "ok") rows of one split: texts, teacher probabilities, labels.

    Single-label: `probs` rows sum to 1 and `label_ids` is the teacher's label. Multi-label:
    `probs[i, j]` is the teacher's independent probability that label j applies, `label_matrix`
    the teacher's label set (its `label` column, 0/1), and `label_ids` only the most probable
    label (bookkeeping; nothing multi-label decides by it).
    """

    texts: list[str]
    probs: np.ndarray  # (n, n_labels), rows sum to 1 (single_label) or each in [0, 1]
    label_ids: np.ndarray  # (n,), the teacher's label as an index into the label set
    skipped: int
    row_weights: np.ndarray | None = None  # (n,) from a `weight` column (pseudo-labels, flags)
    features: np.ndarray | None = None  # (n, d) teacher hidden states (feature distillation)
    label_matrix: np.ndarray | None = None  # (n, n_labels) 0/1: multi_label's teacher label set


def prob_columns(labels: list[str]) -> list[str]:
    """The annotation frame's teacher-probability columns, in label order."""
    return [f"{PROB_PREFIX}{lab}" for lab in labels]


def teacher_targets(frame: pd.DataFrame, labels: list[str], split: str,
                    task: str = "single_label") -> TeacherTargets:
    """Pick the ok rows of an annotation frame and check their teacher probabilities."""
    if not get_task(task).exclusive:
        return _multilabel_targets(frame, labels, split)
    cols = prob_columns(labels)
    missing = [c for c in ["text", "status", "label", *cols] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{split} annotations lack column(s) {', '.join(missing)}: annotate with the label "
            f"set {labels} first"
        )
    ok = frame[frame["status"].astype(str) == "ok"]
    probs = ok[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    sums = probs.sum(axis=1)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | ~(sums > 0)
    if bad.any():
        first = ok["id"].iloc[int(np.argmax(bad))] if "id" in ok.columns else ok.index[bad][0]
        raise DataError(
            f"{int(bad.sum())} ok rows of {split} have missing or negative teacher probabilities "
            f"(first: id {first}): re-annotate them or mark their status as failed"
        )
    unknown = sorted(set(ok["label"].astype(str)) - set(labels))
    if unknown:
        raise DataError(f"{split} has teacher labels {unknown} outside the label set {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    return TeacherTargets(
        texts=ok["text"].fillna("").astype(str).tolist(),
        probs=probs / sums[:, None] if len(ok) else probs.reshape(0, len(labels)),
        label_ids=ok["label"].astype(str).map(index).to_numpy(dtype=np.int64),
        skipped=len(frame) - len(ok),
        row_weights=_row_weights(ok, split),
    )


def _multilabel_targets(frame: pd.DataFrame, labels: list[str], split: str) -> TeacherTargets:
    """`teacher_targets` for multi-label stores: per-label probabilities in [0, 1] (not
    renormalised) and `label` as a canonical label-set string ("" for none)."""
    task = get_task("multi_label")
    cols = prob_columns(labels)
    missing = [c for c in ["text", "status", "label", *cols] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{split} annotations lack column(s) {', '.join(missing)}: annotate with the label "
            f"set {labels} first"
        )
    ok = frame[frame["status"].astype(str) == "ok"]
    probs = ok[cols].to_numpy(dtype=np.float64, na_value=np.nan).reshape(len(ok), len(labels))
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | (probs > 1).any(axis=1)
    if bad.any():
        first = ok["id"].iloc[int(np.argmax(bad))] if "id" in ok.columns else ok.index[bad][0]
        raise DataError(
            f"{int(bad.sum())} ok rows of {split} have missing or out-of-[0, 1] teacher "
            f"probabilities (first: id {first}): re-annotate them or mark their status as failed"
        )
    sets = ok["label"].fillna("").astype(str).tolist()
    unknown = sorted({lab for s in sets for lab in task.split(s)} - set(labels))
    if unknown:
        raise DataError(f"{split} has teacher labels {unknown} outside the label set {labels}")
    return TeacherTargets(
        texts=ok["text"].fillna("").astype(str).tolist(),
        probs=probs,
        label_ids=probs.argmax(axis=1).astype(np.int64) if len(ok) else np.zeros(0, np.int64),
        skipped=len(frame) - len(ok),
        row_weights=_row_weights(ok, split),
        label_matrix=task.targets(sets, labels),
    )


def micro_f1(chosen: np.ndarray, reference: np.ndarray) -> float:
    """Micro-averaged F1 of an (n, k) 0/1 decision matrix against a reference one: how
    multi-label agreement with the teacher is measured (1.0 when both choose nothing)."""
    chosen = np.asarray(chosen) > 0.5
    ref = np.asarray(reference) > 0.5
    denominator = int(chosen.sum() + ref.sum())
    return 1.0 if denominator == 0 else float(2 * (chosen & ref).sum() / denominator)


def decision_thresholds(cfg: StudentConfig, probs: np.ndarray,
                        reference: np.ndarray) -> list[float]:
    """Multi-label thresholds: tuned per label for F1 against the teacher's validation labels
    (`cfg.thresholds == "tuned"`), else `cfg.threshold` for every label."""
    if cfg.thresholds == "fixed":
        return [float(cfg.threshold)] * int(np.asarray(probs).shape[1])
    return [float(t) for t in tune_thresholds(probs, reference)]


def _row_weights(ok: pd.DataFrame, split: str) -> np.ndarray | None:
    """The optional `weight` column (confident learning's down-weighting, self-training's
    pseudo-labels): one finite weight ≥ 0 per row; a missing value means 1."""
    if "weight" not in ok.columns:
        return None
    w = pd.to_numeric(ok["weight"], errors="coerce").fillna(1.0).to_numpy(dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise DataError(f"{split} has negative or infinite values in its weight column: "
                        "weights must be ≥ 0")
    return w


def usable_splits(train: pd.DataFrame, validation: pd.DataFrame, labels: list[str],
                  task: str = "single_label") -> tuple[TeacherTargets, TeacherTargets]:
    """The ok rows of each split, checked; a split with none is an error."""
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(f"the label set {labels} needs at least two distinct labels")
    tr = teacher_targets(train, labels, "train", task)
    va = teacher_targets(validation, labels, "validation", task)
    for name, t in (("train", tr), ("validation", va)):
        if t.skipped:
            logger.warning("%s: skipped %d rows the teacher did not annotate (status != ok)",
                           name, t.skipped)
    if not tr.texts or not va.texts:
        split = "train" if not tr.texts else "validation"
        raise DataError(f"the {split} split has no rows annotated ok: nothing to learn from")
    return tr, va


def anchor_rows(anchor: pd.DataFrame | None, validation: pd.DataFrame,
                 cfg: StudentConfig) -> pd.DataFrame | None:
    """Sample and check the anchor: gold-labelled training rows, none of them in validation."""
    if anchor is None or cfg.anchor_size == 0:
        return None
    rows = sample_anchor(anchor, cfg.anchor_size, cfg.seed)
    if "text" in validation.columns:
        leaked = set(rows["text"].astype(str)) & set(validation["text"].astype(str))
        if leaked:
            raise DataError(f"{len(leaked)} anchor texts are in the validation split: sample "
                            "the anchor from training rows only")
    return rows


def prepare_targets(train: pd.DataFrame, validation: pd.DataFrame, labels: list[str],
                    cfg: StudentConfig, anchor: pd.DataFrame | None, task: str = "single_label"
                    ) -> tuple[TeacherTargets, TeacherTargets, NoiseEstimate | None]:
    """The recipe every student kind trains on: the sampled anchor's noise estimate, the anchor
    rows on their gold label (`anchor_targets: gold`; multi-hot for multi-label), the ok rows of
    each split, and the teacher's rationales as extra training texts (`rationale_weight`)."""
    exclusive = get_task(task).exclusive
    rows = anchor_rows(anchor, validation, cfg)
    estimate = estimate_noise if exclusive else estimate_multilabel_noise
    noise = estimate(rows, labels) if rows is not None else None
    if cfg.anchor_targets == "gold" and rows is not None:
        train = with_gold_targets(train, rows, labels, task=task)
    tr, va = usable_splits(train, validation, labels, task)
    if cfg.feature_loss.weight > 0:
        tr.features = teacher_features(train, standardize=cfg.feature_loss.standardize)
    if cfg.rationale_weight > 0:
        tr = with_rationales(tr, train, labels, cfg.rationale_weight)
    return tr, va, noise


RATIONALE_COLUMN = "rationale"


def with_rationales(tr: TeacherTargets, train: pd.DataFrame, labels: list[str],
                    weight: float) -> TeacherTargets:
    """Append each ok row's rationale (the teacher's reason, a `rationale` column) as one more
    training text with that row's targets, at loss weight `weight`."""
    if RATIONALE_COLUMN not in train.columns:
        raise DataError("student.rationale_weight > 0 but the annotations have no rationale "
                        "column: annotate with an openai: teacher in reasoning mode, or set "
                        "rationale_weight: 0")
    ok = train[train["status"].astype(str) == "ok"]
    reasons = ok[RATIONALE_COLUMN].fillna("").astype(str).str.strip().to_numpy()
    keep = np.flatnonzero(reasons != "")
    if not len(keep):
        raise DataError("the rationale column is empty on every ok training row: nothing to add")
    base = tr.row_weights if tr.row_weights is not None else np.ones(len(tr.texts))
    return TeacherTargets(
        texts=tr.texts + reasons[keep].tolist(),
        probs=np.concatenate([tr.probs, tr.probs[keep]]),
        label_ids=np.concatenate([tr.label_ids, tr.label_ids[keep]]),
        skipped=tr.skipped,
        row_weights=np.concatenate([base, np.full(len(keep), weight)]),
        features=None if tr.features is None else np.concatenate([tr.features,
                                                                  tr.features[keep]]),
        label_matrix=None if tr.label_matrix is None else np.concatenate(
            [tr.label_matrix, tr.label_matrix[keep]]),
    )


def teacher_features(train: pd.DataFrame,
                     standardize: bool = FeatureLossConfig().standardize) -> np.ndarray:
    """(n_ok, d) teacher hidden states of the ok training rows, all of one width; with
    `standardize`, each dimension centred and scaled over these rows (a constant dimension
    becomes 0), so that the feature loss asks for what differs between texts."""
    if FEATURES_COLUMN not in train.columns:
        raise DataError("student.feature_loss.weight > 0 but the annotations have no "
                        f"{FEATURES_COLUMN} column: run with a local GGUF or openai: teacher "
                        "(student.feature_loss.teacher), or set feature_loss.weight: 0")
    ok = train[train["status"].astype(str) == "ok"][FEATURES_COLUMN]
    widths = ok.map(lambda v: -1 if v is None else len(v)).to_numpy()
    if len(widths) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    width = int(np.bincount(widths[widths >= 0]).argmax()) if (widths >= 0).any() else -1
    if width <= 0 or (widths != width).any():
        bad = int((widths != width).sum())
        raise DataError(f"{bad} training rows have teacher hidden states of the wrong size "
                        f"(expected {width} values each): recompute them (rerun the step that "
                        "wrote the store) or set feature_loss.weight: 0")
    features = np.stack([np.asarray(v, dtype=np.float32) for v in ok])
    if not standardize:
        return features
    spread = features.std(axis=0)
    return ((features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)).astype(
        np.float32)
