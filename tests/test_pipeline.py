"""pipeline.py: the steps pass the run's settings through, and reuse what is already done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llmdistill import pipeline
from llmdistill.config import EvaluateConfig
from llmdistill.data import text_hash

LABELS = ["negative", "neutral", "positive"]


def test_train_split_uses_the_split_column_else_the_configured_fraction(toy_annotations) -> None:
    frame = toy_annotations(100, seed=4)
    tr, val = pipeline.train_split(frame, seed=0, fraction=0.25)
    assert len(val) == 25 and len(tr) == 75 and not set(tr["id"]) & set(val["id"])
    marked = frame.assign(split=["validation" if i < 10 else "train" for i in range(100)])
    tr, val = pipeline.train_split(marked, seed=0, fraction=0.25)
    assert len(val) == 10 and (val["split"] == "validation").all()


def teacher_rows(gold: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A teacher's annotations of the gold texts: random but valid probabilities, all ok."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=len(gold))
    out = pd.DataFrame({"text_hash": gold["text"].map(text_hash), "status": "ok",
                        "label": [LABELS[i] for i in probs.argmax(1)]})
    for j, lab in enumerate(LABELS):
        out[f"prob_{lab}"] = probs[:, j]
    return out


def test_evaluate_uses_the_configured_latency_samples_and_curve_thresholds(
        tiny_student_dir: Path, toy_annotations, tmp_path: Path) -> None:
    gold = toy_annotations(40, seed=5)[["id", "text", "label"]]
    cfg = EvaluateConfig(bootstrap=50, speed_texts=16, latency_samples=7)
    thresholds = [0.0, 0.55, 1.0]
    metrics = pipeline.evaluate(tiny_student_dir, gold, LABELS, cfg, teacher_rows(gold, 0),
                                {"seconds_per_text": 1.0}, out_dir=tmp_path / "report",
                                curve_thresholds=thresholds)
    assert metrics["info"]["student"]["speed"]["latency_samples"] == 7
    assert [r["threshold"] for r in metrics["cascade"]["curve"]] == thresholds
    assert metrics["info"]["manifest"]["student"]["student_config"]["max_length"] == 32
    assert (tmp_path / "report" / "report.md").exists()
    assert (tmp_path / "report" / "predictions.parquet").exists()


def test_a_student_is_reused_only_for_the_same_run_key(tiny_student_dir: Path,
                                                       tmp_path: Path) -> None:
    import shutil

    from llmdistill.student.record import StudentRecord

    folder = tmp_path / "student"
    shutil.copytree(tiny_student_dir, folder)
    record = StudentRecord.load(folder)
    record.run_key = {"annotations": "abc", "student": {"epochs": 3}}
    record.save(folder)
    assert pipeline.matching_student(folder, {"annotations": "abc", "student": {"epochs": 3}})
    assert not pipeline.matching_student(folder, {"annotations": "abd",
                                                   "student": {"epochs": 3}})
    assert not pipeline.matching_student(tmp_path / "none", record.run_key)
    (folder / "llmdistill.json").write_text("{broken")
    assert not pipeline.matching_student(folder, record.run_key)  # unreadable: retrain


@pytest.mark.parametrize("missing", ["nope", "file"])
def test_evaluate_on_a_missing_student_folder_says_so(tmp_path: Path, missing: str) -> None:
    from llmdistill.errors import UsageError

    path = tmp_path / missing
    if missing == "file":
        path.write_text("x")
    gold = pd.DataFrame({"id": ["a"], "text": ["t"], "label": ["neutral"]})
    with pytest.raises(UsageError, match="student folder|not a student folder"):
        pipeline.evaluate(path, gold, LABELS, EvaluateConfig())
