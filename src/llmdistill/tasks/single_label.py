"""One exclusive label per text: the teacher renormalises over the labels, the student is a
softmax, the answer is the argmax."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from llmdistill.errors import DataError
from llmdistill.tasks.base import Task, softmax


class SingleLabel(Task):
    name = "single_label"
    exclusive = True

    def parse_gold(self, values: pd.Series, labels: list[str] | None, where: str,
                   allow_empty: bool = False) -> tuple[pd.Series, list[str]]:
        gold = values.astype(str).str.strip()
        found = sorted(gold.unique())
        labels = list(labels) if labels else found
        check_label_set(labels, where)
        bad = sorted(set(found) - set(labels))
        if bad:
            raise DataError(f"{where}: gold label(s) {bad[:5]} are not in the label set "
                            f"{labels}: fix the data or set data.labels")
        return gold, labels

    def targets(self, gold: Sequence[str], labels: list[str]) -> np.ndarray:
        index = {lab: j for j, lab in enumerate(labels)}
        out = np.zeros((len(gold), len(labels)))
        out[np.arange(len(gold)), [index[g] for g in gold]] = 1.0
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    def decide(self, probs: np.ndarray, labels: list[str],
               thresholds: Sequence[float] | None = None) -> list[str]:
        return [labels[i] for i in np.asarray(probs).argmax(axis=1)]

    def decide_matrix(self, probs: np.ndarray,
                      thresholds: Sequence[float] | None = None) -> np.ndarray:
        probs = np.asarray(probs)
        out = np.zeros(probs.shape, dtype=bool)
        out[np.arange(len(probs)), probs.argmax(axis=1)] = True
        return out


def check_label_set(labels: list[str], where: str) -> None:
    if len(labels) < 2:
        raise DataError(f"{where}: the label set has {len(labels)} label(s); a classifier needs "
                        "at least two: set data.labels or fix the label column")
