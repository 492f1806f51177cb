"""Long documents as overlapping windows (`student.long_text: windows`), for training and
prediction alike.

A text whose tokens (special tokens included) fit in `max_length` stays one window, exactly the
text. A longer one is cut at token boundaries into windows of `max_length` tokens (specials
included) whose starts lie `stride` content tokens apart, at most `max_windows` of them (the rest
of the text is cut, as truncation would). Windows are substrings of the text, found through the
tokenizer's offsets, so every backend (PyTorch, ONNX, a plain `transformers` pipeline) runs them
as ordinary texts; a window re-tokenized on its own is truncated at `max_length` like any text.

Training: each window is one example with its text's targets, weighted 1 / (its text's windows)
so that a long text counts once, as it does under truncation (the label mix over texts, and the
class and confidence weights, keep their meaning). Prediction: the windows' logits are pooled
per text (`mean` or `max`) before the task's activation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from llmdistill.config import StudentConfig
from llmdistill.errors import UsageError

if TYPE_CHECKING:
    from llmdistill.student.targets import TeacherTargets

POOLS = ("mean", "max")


@dataclass(frozen=True)
class Windowing:
    """How a text longer than `max_length` tokens becomes windows, and how they pool."""

    max_length: int
    stride: int
    max_windows: int
    pool: str

    @classmethod
    def of(cls, cfg: StudentConfig, max_length: int | None = None) -> Windowing | None:
        """The windowing `cfg` asks for (None: truncate); `max_length` caps the window size."""
        return cls.from_settings(cfg.model_dump(mode="json"), max_length)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any],
                      max_length: int | None = None) -> Windowing | None:
        """From a StudentConfig dump (a record's `student_config`): None for `truncate`, and
        for records written before windows existed."""
        defaults = StudentConfig()
        if settings.get("long_text", "truncate") != "windows":
            return None
        pool = str(settings.get("window_pool", defaults.window_pool))
        if pool not in POOLS:
            raise UsageError(f"window_pool {pool!r} is not one of {', '.join(POOLS)}: fix the "
                             "student's llmdistill.json or retrain")
        length = int(settings.get("max_length", defaults.max_length))
        return cls(max_length=min(length, max_length) if max_length else length,
                   stride=int(settings.get("window_stride", defaults.window_stride)),
                   max_windows=int(settings.get("max_windows", defaults.max_windows)),
                   pool=pool)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for records and cards."""
        return {"max_length": self.max_length, "stride": self.stride,
                "max_windows": self.max_windows, "pool": self.pool}


def split_windows(texts: list[str], tokenizer: Any,
                  windowing: Windowing) -> tuple[list[str], np.ndarray]:
    """Every text's windows, in text order, and the index of the text each window belongs to."""
    specials = len(tokenizer("")["input_ids"])
    room = windowing.max_length - specials
    if room < 1:
        raise UsageError(f"student.max_length {windowing.max_length} leaves no room for text "
                         f"beside the tokenizer's {specials} special tokens: raise it")
    try:
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        raise UsageError("long_text: windows needs a fast tokenizer (one that reports token "
                         "offsets): use long_text: truncate for this model") from None
    windows: list[str] = []
    owner: list[int] = []
    for i, (text, offsets) in enumerate(zip(texts, enc["offset_mapping"], strict=True)):
        n = len(offsets)
        if n <= room:
            windows.append(text)
            owner.append(i)
            continue
        start = 0
        for _ in range(windowing.max_windows):
            end = min(start + room, n)
            windows.append(text[offsets[start][0]:offsets[end - 1][1]])
            owner.append(i)
            start += windowing.stride
            if end >= n or start >= n:
                break
    return windows, np.asarray(owner, dtype=np.int64)


def pool_logits(logits: np.ndarray, owner: np.ndarray, n: int, how: str) -> np.ndarray:
    """(n, k) per-text logits: the mean or the max of each text's windows' (m, k) logits."""
    logits = np.asarray(logits, dtype=np.float64)
    owner = np.asarray(owner, dtype=np.int64)
    if how == "max":
        out = np.full((n, logits.shape[1]), -np.inf)
        np.maximum.at(out, owner, logits)
        return out
    out = np.zeros((n, logits.shape[1]))
    np.add.at(out, owner, logits)
    return out / np.maximum(np.bincount(owner, minlength=n), 1)[:, None]


def windowed_targets(t: TeacherTargets, windows: list[str], owner: np.ndarray,
                     text_weights: np.ndarray | None) -> tuple[TeacherTargets, np.ndarray | None]:
    """The targets of each window (its text's), and the loss weights: the text's weight ÷ its
    number of windows, mean 1 over the windows (None when all are equal)."""
    counts = np.bincount(owner, minlength=len(t.texts))
    out = replace(
        t, texts=list(windows), probs=t.probs[owner], label_ids=t.label_ids[owner],
        row_weights=None if t.row_weights is None else t.row_weights[owner],
        features=None if t.features is None else t.features[owner],
        label_matrix=None if t.label_matrix is None else t.label_matrix[owner])
    base = np.ones(len(t.texts)) if text_weights is None else np.asarray(text_weights, float)
    w = base[owner] / counts[owner]
    if len(w) == 0 or np.allclose(w, w[0]):
        return out, None
    return out, w / w.mean()
