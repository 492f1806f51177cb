"""What every student kind trains on: ok rows, the anchor, rationales, teacher hidden states."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmdistill.config import StudentConfig
from llmdistill.errors import DataError
from llmdistill.student.targets import prepare_targets, teacher_features, with_rationales

LABELS = ["negative", "neutral", "positive"]


def _frame(toy_annotations, n: int = 30, seed: int = 0) -> pd.DataFrame:
    frame = toy_annotations(n, seed=seed)
    frame["rationale"] = [f"because of {t.split()[0]}" for t in frame["text"]]
    return frame


def test_rationales_become_extra_texts_with_their_rows_targets_at_the_given_weight(
        toy_annotations) -> None:
    train, val = _frame(toy_annotations), _frame(toy_annotations, 10, 1)
    train.loc[0, "rationale"] = ""  # no reason given: no extra text
    tr, _, _ = prepare_targets(train, val, LABELS, StudentConfig(rationale_weight=0.3,
                                                                 anchor_size=0), None)
    n = len(train)
    assert len(tr.texts) == 2 * n - 1
    assert tr.texts[n:] == train["rationale"].iloc[1:].tolist()
    assert np.allclose(tr.probs[n:], tr.probs[1:n])
    assert (tr.label_ids[n:] == tr.label_ids[1:n]).all()
    assert np.allclose(tr.row_weights[:n], 1.0) and np.allclose(tr.row_weights[n:], 0.3)


def test_rationales_off_by_default_and_a_clear_error_without_the_column(toy_annotations) -> None:
    train, val = toy_annotations(20), toy_annotations(10, seed=1)
    tr, _, _ = prepare_targets(train, val, LABELS, StudentConfig(anchor_size=0), None)
    assert len(tr.texts) == len(train)
    with pytest.raises(DataError, match="no rationale column"):
        with_rationales(tr, train, LABELS, 0.5)


def test_teacher_features_keep_ok_rows_in_order_and_follow_their_rationales(
        toy_annotations) -> None:
    train = _frame(toy_annotations, 12)
    train["teacher_features"] = [np.full(4, i, dtype=np.float32) for i in range(len(train))]
    train.loc[2, "status"] = "error"
    feats = teacher_features(train, standardize=False)
    assert feats.shape == (11, 4) and feats[2, 0] == 3.0
    cfg = StudentConfig(anchor_size=0, rationale_weight=0.5, feature_loss={"weight": 1.0})
    tr, _, _ = prepare_targets(train, toy_annotations(6, seed=1), LABELS, cfg, None)
    assert tr.features.shape == (len(tr.texts), 4)
    assert np.allclose(tr.features[11:], tr.features[:11])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standardized_teacher_features_drop_the_shared_huge_dimensions(toy_annotations,
                                                                       seed) -> None:
    """An LLM's pooled states share a few huge dimensions: standardizing keeps what varies."""
    rng = np.random.default_rng(seed)
    train = _frame(toy_annotations, 40)
    raw = rng.normal(size=(40, 6)).astype(np.float32)
    raw[:, 0] += 50.0  # the shared massive dimension
    raw[:, 5] = 7.0  # a constant one
    train["teacher_features"] = list(raw)
    z = teacher_features(train, standardize=True)
    assert np.allclose(z.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(z[:, :5].std(axis=0), 1.0, atol=1e-4) and np.all(z[:, 5] == 0.0)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    zu = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert (unit @ unit.T).mean() > 0.9 > abs((zu @ zu.T)[~np.eye(40, dtype=bool)].mean())
    tr, _, _ = prepare_targets(train, toy_annotations(6, seed=1), LABELS,
                               StudentConfig(anchor_size=0, feature_loss={"weight": 1.0}), None)
    assert np.allclose(tr.features, z)


ML = ["food", "music", "sports"]


def _ml_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": ["a", "b", "c", "d"], "text": ["x", "y", "z", "w"],
        "status": ["ok", "ok", "ok", "error"], "label": ["food|sports", "", "music", None],
        "prob_food": [0.9, 0.1, 0.2, np.nan], "prob_music": [0.3, 0.2, 0.8, np.nan],
        "prob_sports": [0.7, 0.05, 0.1, np.nan]})


def test_multilabel_targets_keep_independent_probabilities_and_the_teachers_label_sets() -> None:
    from llmdistill.student.targets import teacher_targets

    t = teacher_targets(_ml_frame(), ML, "train", "multi_label")
    assert t.skipped == 1 and t.texts == ["x", "y", "z"]
    np.testing.assert_allclose(t.probs[0], [0.9, 0.3, 0.7])  # not renormalised
    np.testing.assert_array_equal(t.label_matrix, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("column, value, message", [
    ("prob_music", 1.2, "out-of-\\[0, 1\\]"), ("label", "food|jazz", "jazz")])
def test_multilabel_targets_refuse_probabilities_outside_0_1_and_unknown_labels(
        column: str, value, message: str) -> None:
    from llmdistill.student.targets import teacher_targets

    frame = _ml_frame()
    frame.loc[1, column] = value
    with pytest.raises(DataError, match=message):
        teacher_targets(frame, ML, "train", "multi_label")


def test_micro_f1_and_the_fixed_or_tuned_thresholds() -> None:
    from llmdistill.student.targets import decision_thresholds, micro_f1

    ref = np.array([[1, 0], [1, 1], [0, 0]])
    assert micro_f1(ref, ref) == 1.0 and micro_f1(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert micro_f1(np.array([[1, 1], [0, 0], [0, 0]]), ref) == pytest.approx(2 * 1 / (2 + 3))
    probs = np.array([[0.3, 0.1], [0.35, 0.9], [0.1, 0.2]])
    assert decision_thresholds(StudentConfig(thresholds="fixed", threshold=0.4), probs,
                               ref) == [0.4, 0.4]
    tuned = decision_thresholds(StudentConfig(), probs, ref)
    assert len(tuned) == 2 and all(0 <= t <= 1 for t in tuned)
    assert ((probs >= np.array(tuned)) == (ref > 0)).all()  # separable: tuned thresholds split it
