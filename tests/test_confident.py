"""Confident learning: out-of-fold probabilities, cleanlab's flags, and what happens to them."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer

from llmdistill.config import ConfidentConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.student.confident import (
    IssueReport,
    apply_issues,
    find_label_issues,
    head_oof_probabilities,
    issues_from_probs,
    oof_probabilities,
)

LABELS = ["negative", "neutral", "positive"]


def flipped(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """`frame` with the teacher label of a seeded `share` of rows moved to another label."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    flip = rng.random(len(out)) < share
    ids = out["label"].map(LABELS.index).to_numpy().copy()
    ids[flip] = (ids[flip] + rng.integers(1, len(LABELS), flip.sum())) % len(LABELS)
    out["label"] = [LABELS[i] for i in ids]
    return out, flip


def synthetic_probs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher labels with ~15% flipped, and out-of-fold probabilities that know the truth."""
    rng = np.random.default_rng(seed)
    k = len(LABELS)
    truth = rng.integers(0, k, n)
    flip = rng.random(n) < 0.15
    labels = np.where(flip, (truth + rng.integers(1, k, n)) % k, truth)
    probs = 0.4 * rng.dirichlet(np.ones(k), n)
    probs[np.arange(n), truth] += 0.6
    return labels, probs, flip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_rows_are_flagged_far_more_often_than_clean_ones(seed: int) -> None:
    labels, probs, flip = synthetic_probs(400, seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[issues_from_probs(labels, probs)] = True
    assert mask[flip].mean() > 0.6
    assert mask[~flip].mean() < 0.05


def test_flags_are_ranked_by_self_confidence_lowest_first() -> None:
    labels, probs, _ = synthetic_probs(300, 0)
    ranked = issues_from_probs(labels, probs)
    self_conf = probs[ranked, labels[ranked]]
    assert len(ranked) > 0 and len(set(ranked)) == len(ranked)
    assert np.all(np.diff(self_conf) >= -1e-12)


def test_labels_that_no_row_carries_are_left_out() -> None:
    labels, probs, _ = synthetic_probs(200, 3)
    wide = np.hstack([probs * 0.9, np.full((len(probs), 1), 0.1)])  # a 4th, unused label
    ranked = issues_from_probs(labels, wide)
    assert ranked.min() >= 0 and ranked.max() < len(labels)
    assert issues_from_probs(np.zeros(5, dtype=int), wide[:5]).size == 0  # one label: nothing


def test_the_head_and_cleanlab_find_flipped_labels_on_word_features(toy_annotations) -> None:
    frame, flip = flipped(toy_annotations(240, seed=4), 0.1, seed=4)
    features = CountVectorizer().fit_transform(frame["text"]).toarray().astype(float)
    ids = frame["label"].map(LABELS.index).to_numpy()
    oof = head_oof_probabilities(features, ids, len(LABELS), folds=5, seed=0)
    mask = np.zeros(len(frame), dtype=bool)
    mask[issues_from_probs(ids, oof)] = True
    assert mask[flip].mean() > 0.5
    assert mask[~flip].mean() < 0.1


def test_head_probabilities_are_distributions_with_zero_for_an_absent_label() -> None:
    rng = np.random.default_rng(0)
    ids = np.repeat([0, 2], 20)
    features = rng.normal(size=(40, 5)) + ids[:, None]
    oof = head_oof_probabilities(features, ids, 3, folds=4, seed=1)
    assert oof.shape == (40, 3)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-9)
    assert (oof >= 0).all() and (oof[:, 1] == 0).all()


def test_oof_probabilities_from_the_encoder_have_one_distribution_per_text(
        tiny_bert_dir, toy_annotations) -> None:
    frame = toy_annotations(30, seed=5)
    ids = frame["label"].map(LABELS.index).to_numpy()
    oof = oof_probabilities(frame["text"].tolist(), ids, len(LABELS), str(tiny_bert_dir),
                            folds=3, max_length=32)
    assert oof.shape == (30, 3)
    np.testing.assert_allclose(oof.sum(axis=1), 1.0, atol=1e-9)


def test_find_label_issues_reports_on_the_ok_rows_it_checked(tiny_bert_dir,
                                                            toy_annotations) -> None:
    frame, _ = flipped(toy_annotations(45, seed=6), 0.2, seed=6)
    frame.loc[[0, 1], "status"] = "unparseable"
    frame.loc[[0, 1], ["label", "prob_negative"]] = [None, np.nan]
    report = find_label_issues(frame, LABELS, str(tiny_bert_dir), ConfidentConfig(folds=3),
                               max_length=32, skip_ids={"t2", "t3"})
    assert report.mask.shape == (45,) and report.mask.dtype == bool
    assert not report.mask[:4].any()
    assert report.checked == 41 == sum(report.checked_per_class.values())
    assert sum(report.flagged_per_class.values()) == report.count
    d = json.loads(json.dumps(report.to_dict()))
    assert d["count"] == report.count and 0 <= d["share"] <= 1
    assert set(d["per_class"]) == set(LABELS)
    assert len(d["sample"]) == min(report.count, 20)
    conf = [s["self_confidence"] for s in d["sample"]]
    assert conf == sorted(conf)
    flagged_ids = set(frame.loc[report.mask, "id"])
    assert {s["id"] for s in d["sample"]} <= flagged_ids
    assert all(s["suggested"] in LABELS and s["teacher"] in LABELS for s in d["sample"])


def test_rare_labels_go_unchecked_and_folds_shrink_to_the_rarest(
        tiny_bert_dir, toy_annotations, caplog) -> None:
    frame = toy_annotations(24, seed=7)
    frame["label"] = ["negative"] * 12 + ["positive"] * 11 + ["neutral"]
    with caplog.at_level(logging.WARNING):
        report = find_label_issues(frame, LABELS, str(tiny_bert_dir), ConfidentConfig(folds=20),
                                   max_length=32)
    assert report.folds == 11 and report.checked == 23 and not report.mask[-1]
    assert "single row" in caplog.text and "11 folds" in caplog.text


def test_bad_input_is_a_one_line_data_error(tiny_bert_dir, toy_annotations) -> None:
    frame = toy_annotations(10, seed=8)
    with pytest.raises(DataError, match="column"):
        find_label_issues(frame.drop(columns="status"), LABELS, str(tiny_bert_dir),
                          ConfidentConfig())
    with pytest.raises(DataError, match="outside the label set"):
        find_label_issues(frame.assign(label="maybe"), LABELS, str(tiny_bert_dir),
                          ConfidentConfig())
    with pytest.raises(DataError, match="two teacher labels"):
        find_label_issues(frame.assign(label="neutral"), LABELS, str(tiny_bert_dir),
                          ConfidentConfig())


def report_for(frame: pd.DataFrame, flagged: list[int]) -> IssueReport:
    mask = np.zeros(len(frame), dtype=bool)
    mask[flagged] = True
    return IssueReport(labels=LABELS, mask=mask, checked=len(frame), folds=5,
                       checked_per_class={}, flagged_per_class={})


def test_apply_issues_drops_downweights_or_leaves_alone(toy_annotations) -> None:
    frame = toy_annotations(10, seed=9)
    report = report_for(frame, [1, 4])
    assert apply_issues(frame, report, ConfidentConfig(action="off")) is frame
    dropped = apply_issues(frame, report, ConfidentConfig(action="drop"))
    assert list(dropped["id"]) == [f"t{i}" for i in range(10) if i not in (1, 4)]
    assert not dropped["issue"].any()
    down = apply_issues(frame, report, ConfidentConfig(action="downweight", weight=0.3))
    assert down["issue"].tolist() == report.mask.tolist()
    np.testing.assert_allclose(down["weight"], np.where(report.mask, 0.3, 1.0))
    weighted = frame.assign(weight=[0.5] * 5 + [None] * 5)
    again = apply_issues(weighted, report, ConfidentConfig(action="downweight", weight=0.3))
    np.testing.assert_allclose(again["weight"], [0.5, 0.15, 0.5, 0.5, 0.15, 1, 1, 1, 1, 1])
    assert "weight" not in frame.columns and "issue" not in frame.columns  # input untouched


def test_apply_issues_refuses_a_report_of_another_frame(toy_annotations) -> None:
    frame = toy_annotations(10, seed=9)
    with pytest.raises(UsageError, match="covers 3 rows"):
        apply_issues(frame, report_for(frame.head(3), [0]), ConfidentConfig(action="drop"))
