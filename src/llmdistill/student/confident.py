"""Confident learning: find the training texts whose teacher label is likely wrong.

Out-of-fold probabilities for each ok training row come from the student's encoder: its
mean-pooled embeddings (`features.embed`) under a multinomial logistic-regression head, fitted
with `cross_val_predict` over stratified folds. This is the cheap, standard form of "out-of-fold
student probabilities": k fine-tunings of the encoder would cost k full trainings, a linear head
on frozen features costs seconds. cleanlab (Northcutt et al., 2021) then flags the rows whose
teacher label the out-of-fold model confidently contradicts, ranked by self-confidence (the
out-of-fold probability of the teacher's own label, lowest first). `apply_issues` drops the
flagged rows or lowers their loss weight (the `weight` column training reads).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from llmdistill.config import ConfidentConfig, StudentConfig
from llmdistill.errors import DataError, UsageError

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 20
RANKED_BY = "self_confidence"


@dataclass
class IssueReport:
    """Which rows of the checked frame confident learning flagged, and why."""

    labels: list[str]
    mask: np.ndarray  # (len(frame),) bool: flagged; False for rows not checked (non-ok, skipped)
    checked: int  # rows that took part (ok, not skipped, of a label with ≥ 2 rows)
    folds: int  # folds actually used
    checked_per_class: dict[str, int]  # checked rows per teacher label
    flagged_per_class: dict[str, int]  # flagged rows per teacher label
    sample: list[dict[str, Any]] = field(default_factory=list)  # flagged rows, most suspect first

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    def to_dict(self, sample_size: int = SAMPLE_SIZE) -> dict[str, Any]:
        """JSON-ready summary for the report: count, share, per class, a ranked sample."""
        per_class = {
            lab: {"checked": self.checked_per_class.get(lab, 0),
                  "flagged": self.flagged_per_class.get(lab, 0),
                  "share": round(self.flagged_per_class.get(lab, 0)
                                 / max(self.checked_per_class.get(lab, 0), 1), 4)}
            for lab in self.labels
        }
        return {"count": self.count, "checked": self.checked,
                "share": round(self.count / max(self.checked, 1), 4), "folds": self.folds,
                "ranked_by": RANKED_BY, "per_class": per_class,
                "sample": self.sample[:sample_size]}


def oof_probabilities(texts: list[str], label_ids: np.ndarray, n_labels: int, model: str,
                      folds: int = ConfidentConfig().folds, seed: int = 0,
                      max_length: int = StudentConfig().max_length) -> np.ndarray:
    """(n, n_labels) out-of-fold probabilities of each text from `model`'s embeddings.

    A label absent from `label_ids` gets probability 0 (the head never saw it).
    """
    from llmdistill.student.features import embed

    features = embed(model, texts, max_length=max_length)
    return head_oof_probabilities(features, label_ids, n_labels, folds, seed)


def head_oof_probabilities(features: np.ndarray, label_ids: np.ndarray, n_labels: int,
                           folds: int = ConfidentConfig().folds, seed: int = 0) -> np.ndarray:
    """Out-of-fold probabilities of a standardised multinomial logistic regression on
    `features`, over `folds` stratified, seeded folds (columns in label-id order)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    label_ids = np.asarray(label_ids, dtype=np.int64)
    present = np.unique(label_ids)
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    # cross_val_predict orders its columns by the sorted labels present in y
    compact = cross_val_predict(head, features, label_ids, cv=cv, method="predict_proba")
    out = np.zeros((len(label_ids), n_labels), dtype=np.float64)
    out[:, present] = compact
    return out


def issues_from_probs(label_ids: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Positions of the rows cleanlab flags as label issues, most suspect (lowest
    self-confidence) first. Labels that no row carries are left out of the comparison."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    label_ids = np.asarray(label_ids, dtype=np.int64)
    present = np.unique(label_ids)
    if len(label_ids) == 0 or len(present) < 2:
        return np.zeros(0, dtype=np.int64)
    probs = np.asarray(pred_probs, dtype=np.float64)[:, present]
    probs = np.clip(probs, 1e-12, None)
    probs /= probs.sum(axis=1, keepdims=True)
    compact = np.searchsorted(present, label_ids)
    ranked = cleanlab_issues(labels=compact, pred_probs=probs,
                             return_indices_ranked_by=RANKED_BY, n_jobs=1)
    return np.asarray(ranked, dtype=np.int64)


def find_label_issues(frame: pd.DataFrame, labels: list[str], model: str, cfg: ConfidentConfig,
                      seed: int = 0, max_length: int = StudentConfig().max_length,
                      skip_ids: Collection[str] = ()) -> IssueReport:
    """Flag the ok rows of `frame` (training annotations) whose teacher label is likely wrong.

    `model`: the student's encoder (embedded name, folder or HF id). `skip_ids`: row ids left
    unchecked and out of the fit (e.g. anchor rows that train on their gold label). Labels with
    a single checked row are left unchecked (a warning); folds drop to the rarest label's count.
    """
    missing = [c for c in ("id", "text", "status", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"confident learning needs annotation column(s) {', '.join(missing)}: "
                        "pass the annotation store's training rows")
    status_ok = frame["status"].astype(str).eq("ok").to_numpy()
    candidate = status_ok & ~frame["id"].astype(str).isin({str(i) for i in skip_ids}).to_numpy()
    teacher = frame["label"].astype(str)
    unknown = sorted(set(teacher[candidate]) - set(labels))
    if unknown:
        raise DataError(f"teacher labels {unknown} are outside the label set {labels}: "
                        "annotate with this label set")
    counts = teacher[candidate].value_counts()
    rare = sorted(lab for lab, n in counts.items() if n < 2)
    if rare:
        logger.warning("confident learning: teacher label(s) %s have a single row and are not "
                       "checked", rare)
    checked = candidate & ~teacher.isin(rare).to_numpy()
    kept = counts.drop(rare)
    if len(kept) < 2:
        raise DataError("confident learning needs at least two teacher labels with 2 or more ok "
                        "rows each: annotate more texts or set confident.action to off")
    folds = min(cfg.folds, int(kept.min()))
    if folds < cfg.folds:
        logger.warning("confident learning: %d folds instead of %d (the rarest teacher label "
                       "has %d rows)", folds, cfg.folds, int(kept.min()))
    index = {lab: i for i, lab in enumerate(labels)}
    rows = frame[checked]
    label_ids = rows["label"].astype(str).map(index).to_numpy(dtype=np.int64)
    oof = oof_probabilities(rows["text"].fillna("").astype(str).tolist(), label_ids,
                            len(labels), model, folds, seed, max_length)
    ranked = issues_from_probs(label_ids, oof)
    positions = np.flatnonzero(checked)
    mask = np.zeros(len(frame), dtype=bool)
    mask[positions[ranked]] = True
    flagged = rows.iloc[ranked]
    self_conf = oof[np.arange(len(rows)), label_ids]
    sample = [{"id": str(r.id), "text": str(r.text), "teacher": str(r.label),
               "suggested": labels[int(np.argmax(oof[i]))],
               "self_confidence": round(float(self_conf[i]), 4)}
              for i, r in zip(ranked[:SAMPLE_SIZE], flagged.head(SAMPLE_SIZE).itertuples(),
                              strict=True)]
    report = IssueReport(
        labels=list(labels), mask=mask, checked=len(rows), folds=folds,
        checked_per_class={lab: int(n) for lab, n in rows["label"].astype(str)
                           .value_counts().items()},
        flagged_per_class={lab: int(n) for lab, n in flagged["label"].astype(str)
                           .value_counts().items()},
        sample=sample,
    )
    logger.info("confident learning flagged %d of %d teacher labels", report.count, len(rows))
    return report


def apply_issues(frame: pd.DataFrame, report: IssueReport, cfg: ConfidentConfig) -> pd.DataFrame:
    """`frame` (the one `report` checked) with a bool `issue` column and the flagged rows
    dropped (`drop`) or their `weight` multiplied by `cfg.weight` (`downweight`, a missing
    weight counting as 1); `off` returns `frame` unchanged."""
    if cfg.action == "off":
        return frame
    if len(report.mask) != len(frame):
        raise UsageError(f"the issue report covers {len(report.mask)} rows but the frame has "
                         f"{len(frame)}: apply it to the frame find_label_issues checked")
    out = frame.assign(issue=report.mask)
    if cfg.action == "drop":
        return out[~report.mask]
    weight = (pd.to_numeric(out["weight"], errors="coerce").fillna(1.0)
              if "weight" in out.columns else pd.Series(1.0, index=out.index))
    out["weight"] = np.where(report.mask, weight * cfg.weight, weight)
    return out
