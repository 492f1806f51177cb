"""The teacher is a noisy labeller: measure how, on a small gold "anchor" set, and correct for it.

The anchor is a few hundred gold-labelled rows of the *training* split (never validation or test).
From it come the teacher's confusion matrix T[i, j] = P(teacher says j | gold is i), with add-one
smoothing, and the gold class prior. Two corrections use them:

- prior correction: at inference, add log(gold prior) − log(prior the student was trained to
  predict) to the student's logits (label-shift correction; Saerens et al., 2002). It is folded
  into the classifier's bias, so the saved folder stays a plain HF model.
- forward correction: train on log(softmax(logits) @ T) against the teacher's targets, so that
  softmax(logits) itself estimates the gold posterior (Patrini et al., 2017).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from llmdistill.errors import DataError, UsageError
from llmdistill.tasks import get_task

CLASS_WEIGHTS = ("none", "balanced", "anchor")


@dataclass
class NoiseEstimate:
    """What the anchor set says about the teacher."""

    labels: list[str]
    anchor_size: int
    counts: np.ndarray  # (k, k) rows gold, columns teacher: raw counts on the anchor
    transition: np.ndarray  # (k, k) row-stochastic, add-one smoothed P(teacher j | gold i)
    gold_prior: np.ndarray  # (k,) add-one smoothed gold shares on the anchor
    teacher_agreement: float  # share of anchor rows where the teacher matched gold
    task: str = "single_label"  # multi_label: per-label (k, 2, 2) counts, micro-F1 agreement

    def to_dict(self) -> dict:
        """JSON-ready, rounded for the record and the report."""
        d = asdict(self)
        d["counts"] = self.counts.astype(int).tolist()
        d["transition"] = np.round(self.transition, 4).tolist()
        d["gold_prior"] = np.round(self.gold_prior, 4).tolist()
        return d


def sample_anchor(frame: pd.DataFrame, size: int, seed: int,
                  gold_column: str = "gold") -> pd.DataFrame:
    """A seeded sample of `size` rows with a gold label and an ok teacher answer, stratified by
    gold; all such rows when there are fewer. Pass only training rows."""
    if gold_column not in frame.columns:
        raise DataError(f"the anchor needs a {gold_column!r} column of gold labels: pass training "
                        "rows that have gold labels, or set student.anchor_size to 0")
    pool = frame[frame[gold_column].notna() & (frame["status"].astype(str) == "ok")]
    if pool.empty:
        raise DataError("no training row has both a gold label and an ok teacher answer: label "
                        "some training texts, or set student.anchor_size to 0")
    if size >= len(pool):
        return pool.reset_index(drop=True)
    counts = pool[gold_column].value_counts()
    strat = pool[gold_column] if counts.min() > 1 and size >= len(counts) else None
    part, _ = train_test_split(pool, train_size=size, random_state=seed, stratify=strat)
    return part.reset_index(drop=True)


def estimate_noise(anchor: pd.DataFrame, labels: list[str],
                   gold_column: str = "gold") -> NoiseEstimate:
    """Confusion of the teacher's labels against gold on the anchor rows (ok rows only)."""
    ok = anchor[(anchor["status"].astype(str) == "ok") & anchor[gold_column].notna()]
    index = {lab: i for i, lab in enumerate(labels)}
    gold = ok[gold_column].astype(str).map(index)
    teacher = ok["label"].astype(str).map(index)
    if gold.isna().any() or teacher.isna().any():
        bad = sorted(set(ok[gold_column].astype(str)) - set(labels))
        raise DataError(f"anchor labels {bad or 'of the teacher'} are outside the label set "
                        f"{labels}: fix the gold column")
    if ok.empty:
        raise DataError("the anchor has no rows with gold labels and ok teacher answers")
    k = len(labels)
    counts = np.zeros((k, k))
    np.add.at(counts, (gold.to_numpy(int), teacher.to_numpy(int)), 1)
    transition = (counts + 1) / (counts.sum(axis=1, keepdims=True) + k)
    gold_counts = counts.sum(axis=1)
    return NoiseEstimate(
        labels=list(labels),
        anchor_size=len(ok),
        counts=counts,
        transition=transition,
        gold_prior=(gold_counts + 1) / (gold_counts.sum() + k),
        teacher_agreement=float(np.trace(counts) / counts.sum()),
    )


def estimate_multilabel_noise(anchor: pd.DataFrame, labels: list[str],
                              gold_column: str = "gold") -> NoiseEstimate:
    """Per label, the teacher's yes/no against gold on the anchor rows (canonical label-set
    strings in `label` and `gold`, ok rows only): counts[j] = [[no/no, no/yes], [yes/no,
    yes/yes]] (rows gold, columns teacher), the add-one smoothed transition per label, the
    smoothed share of anchor texts gold gives each label (these need not sum to 1), and the
    teacher's micro-F1 against gold as its agreement. Nothing trains on these (the softmax
    corrections are off for multi-label); they describe the teacher."""
    task = get_task("multi_label")
    ok = anchor[(anchor["status"].astype(str) == "ok") & anchor[gold_column].notna()]
    if ok.empty:
        raise DataError("the anchor has no rows with gold labels and ok teacher answers")
    gold_sets = ok[gold_column].astype(str).tolist()
    teacher_sets = ok["label"].fillna("").astype(str).tolist()
    bad = sorted({lab for s in gold_sets + teacher_sets for lab in task.split(s)} - set(labels))
    if bad:
        raise DataError(f"anchor labels {bad} are outside the label set {labels}: fix the gold "
                        "column")
    gold = task.targets(gold_sets, labels).astype(int)
    teacher = task.targets(teacher_sets, labels).astype(int)
    k = len(labels)
    counts = np.zeros((k, 2, 2))
    for j in range(k):
        np.add.at(counts[j], (gold[:, j], teacher[:, j]), 1)
    hits = int((gold & teacher).sum())
    both = int(gold.sum() + teacher.sum())
    return NoiseEstimate(
        labels=list(labels),
        anchor_size=len(ok),
        counts=counts,
        transition=(counts + 1) / (counts.sum(axis=2, keepdims=True) + 2),
        gold_prior=(gold.sum(axis=0) + 1) / (len(ok) + 2),
        teacher_agreement=1.0 if both == 0 else 2 * hits / both,
        task="multi_label",
    )


def prior_shift(gold_prior: np.ndarray, model_prior: np.ndarray) -> np.ndarray:
    """Logit shift log(gold prior) − log(model prior), centred (softmax ignores a constant)."""
    shift = np.log(np.asarray(gold_prior, float)) - np.log(np.clip(model_prior, 1e-6, None))
    return shift - shift.mean()


def class_factors(mode: str, teacher_label_ids: np.ndarray, k: int,
                  noise: NoiseEstimate | None) -> np.ndarray | None:
    """Per-class loss weights by the teacher's label: `balanced` = n / (k × count);
    `anchor` = gold prior / teacher prior (the training-time form of prior correction)."""
    if mode == "none":
        return None
    counts = np.bincount(teacher_label_ids, minlength=k).astype(float)
    share = (counts + 1) / (counts.sum() + k)
    if mode == "balanced":
        return 1.0 / (k * share)
    if mode == "anchor":
        if noise is None:
            raise UsageError("class_weights: anchor needs an anchor set: pass anchor rows or "
                             "use class_weights: balanced")
        return noise.gold_prior / share
    raise UsageError(f"unknown class_weights {mode!r}: use one of {', '.join(CLASS_WEIGHTS)}")


def classification_head(model: torch.nn.Module,
                        n_labels: int) -> tuple[str, torch.nn.Linear] | None:
    """The classification head's output layer: the last Linear with one output per label
    (`classifier` in BERT, `classifier.out_proj` in RoBERTa, `score` in decoders)."""
    heads = [(n, m) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == n_labels]
    return heads[-1] if heads else None


def fold_into_bias(model: torch.nn.Module, shift: np.ndarray) -> str:
    """Add `shift` to the bias of the classification head's output layer; returns its name.

    The head is the last Linear layer with one output per label (`classifier` in BERT,
    `classifier.out_proj` in RoBERTa).
    """
    found = classification_head(model, len(shift))
    if found is None or found[1].bias is None:
        raise UsageError("prior correction needs a classification head with a bias: set "
                         "student.prior_correction to false for this model")
    name, head = found
    with torch.no_grad():
        head.bias += torch.as_tensor(shift, dtype=head.bias.dtype, device=head.bias.device)
    return name


def with_gold_targets(frame: pd.DataFrame, anchor: pd.DataFrame, labels: list[str],
                      gold_column: str = "gold", task: str = "single_label") -> pd.DataFrame:
    """`frame` with the anchor's rows (matched by id) trained on their gold label, one-hot
    (multi-label: multi-hot of the canonical gold set).

    The anchor's gold is known anyway; learning from it directly, not only through the noise
    estimate, is the cheapest way past the teacher's errors on those rows.
    """
    out = frame.copy()
    gold = dict(zip(anchor["id"], anchor[gold_column], strict=True))
    rows = out["id"].isin(gold.keys())
    target = out.loc[rows, "id"].map(gold)
    if not get_task(task).exclusive:
        hot = get_task(task).targets(target.astype(str).tolist(), labels)
        for j, lab in enumerate(labels):
            out.loc[rows, f"prob_{lab}"] = hot[:, j]
        out.loc[rows, "label"] = target.astype(str).to_numpy()
        return out
    for lab in labels:
        out.loc[rows, f"prob_{lab}"] = (target == lab).astype(float).to_numpy()
    out.loc[rows, "label"] = target.to_numpy()
    return out
