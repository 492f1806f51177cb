"""The task types: gold parsing, targets, activations, decisions and threshold tuning."""

import numpy as np
import pandas as pd
import pytest

from llmdistill.errors import DataError, UsageError
from llmdistill.tasks import SEP, get_task, infer_task
from llmdistill.tasks.multi_label import check_thresholds, tune_thresholds

LABELS = ["business", "sport", "tech"]


def test_infer_task_sees_lists_and_separators():
    assert infer_task(["a", "b"]) == "single_label"
    assert infer_task(["a", "a|b"]) == "multi_label"
    assert infer_task([["a"], ["a", "b"]]) == "multi_label"
    assert infer_task([np.array(["a"])]) == "multi_label"


def test_unknown_task_names_the_known_ones():
    with pytest.raises(UsageError, match="single_label, multi_label"):
        get_task("regression")


def test_multi_label_gold_is_canonical_in_label_order():
    task = get_task("multi_label")
    gold, labels = task.parse_gold(pd.Series(["tech|business", ["sport"], "sport | tech"]),
                                   LABELS, "x")
    assert labels == LABELS
    assert gold.tolist() == ["business|tech", "sport", "sport|tech"]


def test_multi_label_gold_infers_a_sorted_label_set():
    _, labels = get_task("multi_label").parse_gold(pd.Series(["tech|sport", "business"]), None,
                                                   "x")
    assert labels == LABELS


def test_multi_label_gold_refuses_unknown_labels_and_empty_sets():
    task = get_task("multi_label")
    with pytest.raises(DataError, match="not in the label set"):
        task.parse_gold(pd.Series(["tech|cooking"]), LABELS, "x")
    with pytest.raises(DataError, match="allow_empty_labels"):
        task.parse_gold(pd.Series(["tech", ""]), LABELS, "x")
    gold, _ = task.parse_gold(pd.Series(["tech", ""]), LABELS, "x", allow_empty=True)
    assert gold.tolist() == ["tech", ""]


def test_targets_round_trip_through_decisions():
    rng = np.random.default_rng(0)
    task = get_task("multi_label")
    chosen = rng.random((50, 3)) < 0.4
    gold = task.join(chosen, LABELS)
    targets = task.targets(gold, LABELS)
    assert np.array_equal(targets > 0.5, chosen)
    assert task.decide(targets, LABELS) == gold
    assert all(lab in LABELS for g in gold for lab in task.split(g))
    assert all(SEP not in lab for lab in LABELS)


def test_single_label_decides_by_argmax_and_softmax_sums_to_one():
    task = get_task("single_label")
    logits = np.random.default_rng(1).normal(size=(20, 3)) * 5
    probs = task.probabilities(logits)
    assert np.allclose(probs.sum(1), 1)
    assert task.decide(probs, LABELS) == [LABELS[i] for i in logits.argmax(1)]
    assert task.decide_matrix(probs).sum(1).tolist() == [1] * 20


def test_sigmoid_is_independent_per_label_and_overflow_free():
    probs = get_task("multi_label").probabilities(np.array([[-1000.0, 0.0, 1000.0]]))
    assert probs.tolist() == [[0.0, 0.5, 1.0]]


def test_thresholds_outside_the_unit_interval_are_refused():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        check_thresholds([0.5, 1.2, 0.5], 3)
    with pytest.raises(DataError, match="one per label"):
        check_thresholds([0.5, 0.5], 3)
    assert check_thresholds(None, 3).tolist() == [0.5] * 3
    assert check_thresholds([0.3], 3).tolist() == [0.3] * 3


@pytest.mark.parametrize("seed", range(5))
def test_tuned_thresholds_never_do_worse_than_a_half_on_the_tuning_data(seed):
    rng = np.random.default_rng(seed)
    ref = rng.random((200, 4)) < 0.3
    probs = np.clip(ref * 0.35 + rng.random((200, 4)) * 0.5, 0, 1)  # positives sit low
    t = tune_thresholds(probs, ref)
    assert np.all((t > 0) & (t < 1))

    def f1(th):
        pred = probs >= th[None, :]
        tp = (pred & ref).sum(0)
        return 2 * tp / np.maximum(pred.sum(0) + ref.sum(0), 1)

    assert np.all(f1(t) >= f1(np.full(4, 0.5)) - 1e-12)


def test_a_label_the_reference_never_uses_keeps_a_half():
    t = tune_thresholds(np.random.default_rng(0).random((30, 2)), np.zeros((30, 2)))
    assert t.tolist() == [0.5, 0.5]
