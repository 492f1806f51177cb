"""How both reports write a number, and what they read from metrics the same way.

report.md and report.html format every percentage, interval, count, duration and price with
these functions, so the two never show one number two ways. The evaluation settings come from
the metrics (which record the EvaluateConfig used), falling back to EvaluateConfig's own defaults
for metrics that lack a setting: config.py stays the one source of defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmdistill.config import EvaluateConfig
from llmdistill.evaluate import NO_ANSWER

DASH = "—"


def percent(x: float) -> str:
    """A share as a percentage with one decimal: 0.6621 → "66.2%"."""
    return f"{100 * x:.1f}%"


def interval(iv: dict, scale: float = 100, digits: int = 1) -> str:
    """An interval's bounds, in percentage points by default: "[65.0, 67.4]"."""
    return f"[{scale * iv['low']:.{digits}f}, {scale * iv['high']:.{digits}f}]"


def percent_interval(iv: dict) -> str:
    """An accuracy and its interval: "66.2% [65.0, 67.4]"."""
    return f"{percent(iv['value'])} {interval(iv)}"


def score_interval(iv: dict) -> str:
    """A score in [0, 1] (macro-F1) and its interval: "0.664 [0.650, 0.678]"."""
    return f"{iv['value']:.3f} {interval(iv, 1, 3)}"


def optional(value: float | None, fmt: Callable[[float], str]) -> str:
    """`fmt(value)`, or a dash when the value is unknown."""
    return DASH if value is None else fmt(value)


def count(n: float | None) -> str:
    """A parameter count with a unit: 22_700_000 → "22.7M"; a dash when unknown."""
    if n is None:
        return DASH
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def p_value(p: float) -> str:
    """A p-value as a reader expects it: "p = 0.034" or "p < 0.001"."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def duration(seconds: float) -> str:
    """A time with the largest unit that fits: "8.33 min", "4.1 ms"."""
    for unit, scale in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= scale:
            return f"{seconds / scale:,.3g} {unit}"
    return f"{seconds * 1000:,.3g} ms"


def money(cost: dict | None) -> str:
    """Dollars per 1,000 texts from a cost record; a dash when nothing was priced."""
    if not cost or cost.get("dollars_per_1000") is None:
        return DASH
    d = cost["dollars_per_1000"]
    return "$0 billed" if d == 0 else f"${d:,.2f}" if d >= 0.01 else f"${d:.2g}"


def clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, paths to strings, NaN to null."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x) if isinstance(x, Path) else x


def settings(metrics: dict) -> dict:
    """The evaluation settings the metrics record, EvaluateConfig's defaults for any missing."""
    return EvaluateConfig().model_dump() | (metrics.get("settings") or {})


def resamples(metrics: dict) -> int | str:
    """The recorded number of bootstrap resamples, or "?": a count is never guessed."""
    return (metrics.get("settings") or {}).get("bootstrap", "?")


def model_info(metrics: dict, who: str) -> dict:
    """What the caller recorded about the teacher or the student (name, size, speed, cost)."""
    return (metrics.get("info") or {}).get(who) or {}


def relative_size(metrics: dict) -> str:
    """Student size as a fraction of the teacher's: parameters if both known, else bytes."""
    t, s = model_info(metrics, "teacher"), model_info(metrics, "student")
    for num, den in ((s.get("parameters"), t.get("parameters")),
                     ((s.get("size") or {}).get("bytes"), (t.get("size") or {}).get("bytes"))):
        if num and den:
            r = num / den
            return f"1/{round(1 / r):,} of the teacher" if r < 0.1 else f"{r:.0%} of the teacher"
    return DASH


def vs_gold(m: dict, labels: list[str]) -> tuple[list[list[int]], list[str]]:
    """A model's confusion against gold and its columns, with a no-answer column when needed."""
    matrix, cols = m["confusion"], list(labels)
    if m.get("unanswered"):
        matrix = [[*row, u] for row, u in zip(matrix, m["unanswered_by_gold"], strict=True)]
        cols.append(NO_ANSWER)
    return matrix, cols


MAX_MATRIX = 12  # labels up to which a confusion matrix is readable; above, the top confusions


def top_confusions(matrix: list[list[int]], rows: list[str], cols: list[str],
                   n: int = 15) -> list[tuple[str, str, int, float]]:
    """The `n` largest off-diagonal cells: (row label, column label, texts, share of the row)."""
    cells = [(int(v), r, c) for i, (r, line) in enumerate(zip(rows, matrix, strict=True))
             for j, (c, v) in enumerate(zip(cols, line, strict=True)) if i != j and v]
    totals = {r: sum(line) for r, line in zip(rows, matrix, strict=True)}
    return [(r, c, v, v / max(totals[r], 1)) for v, r, c in sorted(cells, reverse=True)[:n]]
