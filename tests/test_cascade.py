"""The cascade's arithmetic: coverage, accuracy and cost of student-first, teacher-when-unsure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmdistill.cascade import cascade_curve, curve_for_report, student_answers
from llmdistill.config import ServeConfig, load_config
from llmdistill.errors import DataError

LABELS = ["negative", "neutral", "positive"]
THRESHOLDS = [0.0, 0.2, 0.34, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0, 1.01]


def _run(n: int = 200, seed: int = 0) -> tuple[np.ndarray, list[str | None], list[str]]:
    """Soft student probabilities, a teacher that is right 70% of the time (silent on some)."""
    rng = np.random.default_rng(seed)
    gold = list(rng.choice(LABELS, n))
    probs = rng.dirichlet([0.6] * 3, n)
    teacher: list[str | None] = [g if rng.random() < 0.7 else str(rng.choice(LABELS))
                                 for g in gold]
    for i in rng.choice(n, 10, replace=False):
        teacher[i] = None
    return probs, teacher, gold


def _student_accuracy(probs: np.ndarray, gold: list[str]) -> float:
    return float(np.mean(np.asarray(LABELS)[probs.argmax(1)] == np.asarray(gold)))


def _teacher_accuracy(teacher: list[str | None], gold: list[str]) -> float:
    return float(np.mean([t == g for t, g in zip(teacher, gold, strict=True)]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coverage_never_grows_with_the_threshold(seed):
    probs, teacher, gold = _run(seed=seed)
    curve = cascade_curve(probs, teacher, gold, LABELS, THRESHOLDS)
    coverage = [r["coverage"] for r in curve]
    assert all(a >= b for a, b in zip(coverage, coverage[1:], strict=False))
    teacher_share = [r["teacher_texts_per_1000"] for r in curve]
    assert all(a <= b for a, b in zip(teacher_share, teacher_share[1:], strict=False))
    for r in curve:
        assert r["teacher_texts_per_1000"] == pytest.approx(1000 * (1 - r["coverage"]))
        assert 0.0 <= r["accuracy"] <= 1.0


def test_threshold_zero_lets_the_student_answer_everything():
    probs, teacher, gold = _run()
    (r,) = cascade_curve(probs, teacher, gold, LABELS, [0.0], 2.0, 4.0)
    assert r["coverage"] == 1.0 and r["teacher_texts_per_1000"] == 0.0
    assert r["accuracy"] == pytest.approx(_student_accuracy(probs, gold))
    assert r["student_accuracy_on_covered"] == pytest.approx(r["accuracy"])
    assert r["cpu_seconds_per_1000"] == 0.0 and r["dollars_per_1000"] == 0.0
    assert student_answers(probs, 0.0).all()


def test_threshold_above_one_leaves_everything_to_the_teacher():
    probs, teacher, gold = _run()
    (r,) = cascade_curve(probs, teacher, gold, LABELS, [1.01], 2.0, 4.0)
    assert r["coverage"] == 0.0 and r["teacher_texts_per_1000"] == 1000.0
    assert r["accuracy"] == pytest.approx(_teacher_accuracy(teacher, gold))  # None: wrong
    assert r["student_accuracy_on_covered"] is None
    assert r["cpu_seconds_per_1000"] == pytest.approx(2000.0)
    assert r["dollars_per_1000"] == pytest.approx(4.0)
    assert not student_answers(probs, 1.01).any()


def test_a_teacher_label_outside_the_label_set_counts_as_wrong():
    probs = np.array([[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    (r,) = cascade_curve(probs, ["negative", "Negative!"], ["negative", "negative"], LABELS, [1.01])
    assert r["accuracy"] == 0.5


def test_cost_scales_with_the_teacher_share():
    probs, teacher, gold = _run()
    seconds, price, student_seconds = 1.5, 8.0, 0.002
    curve = cascade_curve(probs, teacher, gold, LABELS, THRESHOLDS, seconds, price,
                          student_seconds)
    for r in curve:
        share = r["teacher_texts_per_1000"] / 1000
        assert r["dollars_per_1000"] == pytest.approx(share * price)
        assert r["cpu_seconds_per_1000"] == pytest.approx(
            1000 * (share * seconds + student_seconds))
    no_student_time = cascade_curve(probs, teacher, gold, LABELS, THRESHOLDS, seconds, price)
    for with_s, without in zip(curve, no_student_time, strict=True):
        assert with_s["cpu_seconds_per_1000"] - without["cpu_seconds_per_1000"] == pytest.approx(
            1000 * student_seconds)
    unpriced = cascade_curve(probs, teacher, gold, LABELS, [0.5])
    assert unpriced[0]["cpu_seconds_per_1000"] is None
    assert unpriced[0]["dollars_per_1000"] is None


@pytest.mark.parametrize("case", ["too few rows", "too few columns", "short teacher", "empty"])
def test_bad_shapes_raise_data_error(case):
    probs, teacher, gold = _run(n=20)
    args = {"too few rows": (probs[:-1], teacher, gold),
            "too few columns": (probs[:, :2], teacher, gold),
            "short teacher": (probs, teacher[:-1], gold),
            "empty": (np.zeros((0, 3)), [], [])}[case]
    with pytest.raises(DataError, match="cascade_curve needs"):
        cascade_curve(*args, LABELS, [0.5])


def _frames(teacher: list[str | None], gold: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    gold_df = pd.DataFrame({"id": range(len(gold)), "label": gold})
    teacher_df = pd.DataFrame({"id": range(len(gold)),
                               "status": ["ok" if t else "error" for t in teacher],
                               "label": teacher})
    return gold_df, teacher_df


def test_custom_thresholds_reach_the_curve(tmp_path):
    probs, teacher, gold = _run()
    gold_df, teacher_df = _frames(teacher, gold)
    config = tmp_path / "run.yaml"
    config.write_text("serve:\n  curve_thresholds: [0.3, 0.55, 0.85]\n", encoding="utf-8")
    thresholds = load_config(config).serve.curve_thresholds
    out = curve_for_report(probs, teacher_df, gold_df, LABELS, thresholds=thresholds)
    assert out["thresholds"] == [0.3, 0.55, 0.85]
    assert [r["threshold"] for r in out["curve"]] == [0.3, 0.55, 0.85]
    expected = cascade_curve(probs, teacher, gold, LABELS, [0.3, 0.55, 0.85])
    assert out["curve"] == expected


def test_curve_for_report_falls_back_to_the_serve_config_default():
    probs, teacher, gold = _run()
    gold_df, teacher_df = _frames(teacher, gold)
    out = curve_for_report(probs, teacher_df, gold_df, LABELS, {"seconds_per_text": 0.5},
                           {"throughput_texts_per_s": 500.0})
    assert out["thresholds"] == ServeConfig().curve_thresholds
    assert [r["threshold"] for r in out["curve"]] == ServeConfig().curve_thresholds
    assert out["teacher_seconds_per_text"] == 0.5 and out["teacher_dollars_per_1000"] is None
    last = out["curve"][-1]
    assert last["cpu_seconds_per_1000"] == pytest.approx(
        1000 * (last["teacher_texts_per_1000"] / 1000 * 0.5 + 1 / 500.0))
