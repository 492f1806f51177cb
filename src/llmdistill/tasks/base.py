"""What a task type decides: how gold is written, what the teacher's probabilities mean, how the
student turns logits into probabilities and probabilities into an answer.

A task is numpy-only (no torch), so every layer can import it: data reads gold through
`parse_gold`, teachers score through `exclusive`, students train on `targets` and decide with
`decide`, evaluation and the report branch on `name`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pandas as pd

SEP = "|"  # how a label set is written in one string: labels in label-set order, joined


class Task(ABC):
    """A classification task type: one registered instance per type (see tasks/__init__.py)."""

    name: str
    exclusive: bool  # True: one label per text (softmax); False: any subset (sigmoid per label)

    @abstractmethod
    def parse_gold(self, values: pd.Series, labels: list[str] | None, where: str,
                   allow_empty: bool = False) -> tuple[pd.Series, list[str]]:
        """Gold as canonical strings and the label set (inferred, sorted, when `labels` is None);
        a one-line DataError for labels outside the set or (multi-label) an empty set where
        `allow_empty` is False."""

    @abstractmethod
    def targets(self, gold: Sequence[str], labels: list[str]) -> np.ndarray:
        """(n, k) float targets of canonical gold strings: one-hot or multi-hot."""

    @abstractmethod
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(n, k) probabilities from a student's logits: softmax or per-label sigmoid."""

    @abstractmethod
    def decide(self, probs: np.ndarray, labels: list[str],
               thresholds: Sequence[float] | None = None) -> list[str]:
        """Canonical answers (label strings) from (n, k) probabilities."""

    @abstractmethod
    def decide_matrix(self, probs: np.ndarray,
                      thresholds: Sequence[float] | None = None) -> np.ndarray:
        """(n, k) bool: which labels each text gets."""

    def join(self, chosen: np.ndarray, labels: list[str]) -> list[str]:
        """Canonical strings of an (n, k) bool matrix."""
        return [SEP.join(lab for lab, c in zip(labels, row, strict=True) if c) for row in chosen]

    def split(self, value: str) -> list[str]:
        """The labels of one canonical string."""
        return [v for v in str(value).split(SEP) if v] if not self.exclusive else [str(value)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free
