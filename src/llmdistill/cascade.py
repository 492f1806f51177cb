"""Student-first cascade: the student answers when it is sure, the teacher answers the rest.

`cascade_curve` is pure arithmetic on predictions already made (no model is loaded): for each
threshold, which share of texts the student keeps (coverage), the accuracy of the combined
answers on gold, and what 1,000 texts cost in teacher CPU-seconds and dollars. `serve` uses the
same rule online: the student answers a text when its top probability is ≥ the threshold.
The report's Markdown and HTML tables of the curve live in `llmdistill.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llmdistill.config import ServeConfig
from llmdistill.errors import DataError

if TYPE_CHECKING:
    import pandas as pd


def student_answers(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask: texts whose top student probability is ≥ `threshold`."""
    return np.asarray(probs, dtype=np.float64).max(axis=1) >= threshold


def labels_sure(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Multi-label: texts on which the student is sure of every label, i.e. each probability is
    ≥ `threshold` or ≤ 1 − `threshold`; the rest go to the teacher."""
    p = np.asarray(probs, dtype=np.float64)
    return np.all((p >= threshold) | (p <= 1 - threshold), axis=1)


def cascade_curve(
    student_probs: np.ndarray,
    teacher_pred: Sequence[str | None],
    gold: Sequence[str],
    labels: list[str],
    thresholds: Sequence[float],
    teacher_seconds_per_text: float | None = None,
    price_per_1000_teacher: float | None = None,
    student_seconds_per_text: float | None = None,
) -> list[dict]:
    """Coverage, accuracy and cost per 1,000 texts of the cascade at each threshold.

    `student_probs` (n × len(labels)) and `teacher_pred` (a label, or None where the teacher gave
    no usable answer: wrong, as everywhere in the report) follow `gold`'s order. Cost counts
    the teacher's share only (the student runs on every text and its CPU-seconds are added when
    `student_seconds_per_text` is given); dollars only when the teacher has a price.
    """
    probs = np.asarray(student_probs, dtype=np.float64)
    gold_a = np.asarray(list(gold), dtype=object)
    teacher_a = np.asarray([p if p in set(labels) else None for p in teacher_pred], dtype=object)
    n = len(gold_a)
    if n == 0 or probs.shape != (n, len(labels)) or len(teacher_a) != n:
        raise DataError(f"cascade_curve needs one student row ({len(labels)} probabilities) and "
                        f"one teacher prediction per gold label (got {probs.shape}, "
                        f"{len(teacher_a)}, {n})")
    student_pred = np.asarray(labels, dtype=object)[probs.argmax(axis=1)]
    student_ok = student_pred == gold_a
    teacher_ok = teacher_a == gold_a
    rows = []
    for t in thresholds:
        keep = student_answers(probs, float(t))
        correct = np.where(keep, student_ok, teacher_ok)
        teacher_share = 1.0 - float(keep.mean())
        cpu = None
        if teacher_seconds_per_text is not None:
            cpu = 1000 * (teacher_share * teacher_seconds_per_text + (student_seconds_per_text
                                                                      or 0.0))
        rows.append({
            "threshold": float(t),
            "coverage": float(keep.mean()),
            "accuracy": float(correct.mean()),
            "student_accuracy_on_covered": float(student_ok[keep].mean()) if keep.any() else None,
            "teacher_texts_per_1000": 1000 * teacher_share,
            "cpu_seconds_per_1000": cpu,
            "dollars_per_1000": (teacher_share * price_per_1000_teacher
                                 if price_per_1000_teacher is not None else None),
        })
    return rows


def curve_for_report(
    student_probs: np.ndarray,
    teacher_df: pd.DataFrame,
    gold_df: pd.DataFrame,
    labels: list[str],
    teacher_manifest: dict | None = None,
    student_speed: dict | None = None,
    thresholds: Sequence[float] | None = None,
) -> dict:
    """The report's cascade section from what `pipeline.evaluate` already holds.

    `teacher_df` is the teacher's rows aligned to `gold_df` (status, label); seconds and
    dollars per text come from the annotation manifest, the student's from `measure_speed`.
    `thresholds` should be the run's `serve.curve_thresholds`; without them, ServeConfig's
    default list is used (the only place that default is read).
    """
    if thresholds is None:
        thresholds = ServeConfig().curve_thresholds
    thresholds = list(thresholds)
    status = teacher_df["status"].astype(str).to_numpy()
    teacher_pred = [lab if s == "ok" else None
                    for lab, s in zip(teacher_df["label"], status, strict=True)]
    manifest = teacher_manifest or {}
    seconds = manifest.get("seconds_per_text")
    price = manifest.get("dollars_per_1000") or None  # 0 for local teachers: no $ column
    tput = (student_speed or {}).get("throughput_texts_per_s")
    curve = cascade_curve(student_probs, teacher_pred, gold_df["label"].tolist(), labels,
                          thresholds, seconds, price, 1.0 / tput if tput else None)
    return {"thresholds": thresholds, "teacher_seconds_per_text": seconds,
            "teacher_dollars_per_1000": price, "curve": curve}
