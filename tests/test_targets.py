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
    feats = teacher_features(train)
    assert feats.shape == (11, 4) and feats[2, 0] == 3.0
    cfg = StudentConfig(anchor_size=0, rationale_weight=0.5, feature_loss={"weight": 1.0})
    tr, _, _ = prepare_targets(train, toy_annotations(6, seed=1), LABELS, cfg, None)
    assert tr.features.shape == (len(tr.texts), 4)
    assert np.allclose(tr.features[11:], tr.features[:11])
