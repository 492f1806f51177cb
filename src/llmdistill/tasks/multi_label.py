"""Any subset of the labels per text: the teacher gives an independent yes-probability per label,
the student a sigmoid per label, the answer is every label whose probability reaches its
threshold (tuned per label on validation against the teacher, `tune_thresholds`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from llmdistill.errors import DataError
from llmdistill.tasks.base import SEP, Task, sigmoid
from llmdistill.tasks.single_label import check_label_set

DEFAULT_THRESHOLD = 0.5


class MultiLabel(Task):
    name = "multi_label"
    exclusive = False

    def parse_gold(self, values: pd.Series, labels: list[str] | None, where: str,
                   allow_empty: bool = False) -> tuple[pd.Series, list[str]]:
        sets = [label_list(v) for v in values]
        found = sorted({lab for s in sets for lab in s})
        labels = list(labels) if labels else found
        check_label_set(labels, where)
        bad = sorted(set(found) - set(labels))
        if bad:
            raise DataError(f"{where}: gold label(s) {bad[:5]} are not in the label set "
                            f"{labels}: fix the data or set data.labels")
        if not allow_empty:
            empty = [i for i, s in enumerate(sets) if not s]
            if empty:
                raise DataError(f"{where}: {len(empty)} text(s) have no label (first at row "
                                f"{empty[0] + 1}): label them, or set data.allow_empty_labels "
                                "if a text may have none")
        order = {lab: j for j, lab in enumerate(labels)}
        gold = [SEP.join(sorted(set(s), key=order.__getitem__)) for s in sets]
        return pd.Series(gold, index=values.index, dtype=object), labels

    def targets(self, gold: Sequence[str], labels: list[str]) -> np.ndarray:
        index = {lab: j for j, lab in enumerate(labels)}
        out = np.zeros((len(gold), len(labels)))
        for i, g in enumerate(gold):
            for lab in self.split(g):
                out[i, index[lab]] = 1.0
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def decide(self, probs: np.ndarray, labels: list[str],
               thresholds: Sequence[float] | None = None) -> list[str]:
        return self.join(self.decide_matrix(probs, thresholds), labels)

    def decide_matrix(self, probs: np.ndarray,
                      thresholds: Sequence[float] | None = None) -> np.ndarray:
        probs = np.asarray(probs, dtype=float)
        t = check_thresholds(thresholds, probs.shape[1])
        return probs >= t[None, :]


def label_list(value) -> list[str]:
    """One gold cell as a list of labels: a list/array, or a string `a|b` (also `a,b`-free: only
    `|` separates, since label names may hold commas). NaN/None/"" is the empty set."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(SEP) if v.strip()]


def check_thresholds(thresholds: Sequence[float] | None, k: int) -> np.ndarray:
    """Per-label thresholds as an array of k values in [0, 1] (None: 0.5 each)."""
    if thresholds is None:
        return np.full(k, DEFAULT_THRESHOLD)
    t = np.asarray(thresholds, dtype=float).reshape(-1)
    if t.size == 1:
        t = np.full(k, float(t[0]))
    if t.size != k:
        raise DataError(f"{t.size} thresholds for {k} labels: give one per label (or one for all)")
    if not np.all((t >= 0) & (t <= 1)):
        raise DataError(f"thresholds must lie in [0, 1], got {t.tolist()}: fix them")
    return t


def tune_thresholds(probs: np.ndarray, reference: np.ndarray,
                    grid: Sequence[float] | None = None) -> np.ndarray:
    """Per label, the threshold on `probs` with the best F1 against `reference` (an (n, k) 0/1
    matrix: the teacher's labels on validation); ties go to the threshold nearest 0.5, and a label
    the reference never uses keeps 0.5."""
    probs = np.asarray(probs, dtype=float)
    ref = np.asarray(reference) > 0.5
    grid = np.asarray(grid if grid is not None else np.round(np.arange(0.05, 0.951, 0.05), 2))
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for j in range(probs.shape[1]):
        if not ref[:, j].any():
            continue
        pred = probs[:, j][:, None] >= grid[None, :]
        tp = (pred & ref[:, j][:, None]).sum(0)
        f1 = 2 * tp / np.maximum(pred.sum(0) + ref[:, j].sum(), 1)
        best = np.flatnonzero(f1 == f1.max())
        out[j] = float(grid[best[np.argmin(np.abs(grid[best] - DEFAULT_THRESHOLD))]])
    return out
