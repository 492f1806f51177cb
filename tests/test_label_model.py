"""The label model on synthetic teachers whose noise is known: properties with margins that hold
for any seed, never one draw's particular numbers."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from llmdistill.config import LabelModelConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.label_model import Calibration, aggregate, fit_calibration

K = 3
LABELS = ["negative", "neutral", "positive"]
PRIOR = np.array([0.4, 0.35, 0.25])
METHODS = ["first", "mean", "dawid_skene", "stacked", "snorkel"]


def _gold(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(K, size=n, p=PRIOR)


def _symmetric(acc: float) -> np.ndarray:
    conf = np.full((K, K), (1 - acc) / (K - 1))
    np.fill_diagonal(conf, acc)
    return conf


def _hard(rng: np.random.Generator, gold: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """One-hot answers drawn from conf[gold] (rows gold, columns answer)."""
    u = rng.random((len(gold), 1))
    return np.eye(K)[(u > conf[gold].cumsum(axis=1)).sum(axis=1).clip(0, K - 1)]


def _soft(rng: np.random.Generator, gold: np.ndarray, signal: float = 1.2,
          sharpen: float = 3.0) -> np.ndarray:
    """Probabilities from noisy logits, independent of other teachers given gold."""
    z = sharpen * (signal * np.eye(K)[gold] + rng.normal(size=(len(gold), K)))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _acc(probs: np.ndarray, gold: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == gold).mean())


def _anchor(rng: np.random.Generator, gold: np.ndarray, size: int = 200):
    idx = rng.choice(len(gold), size=size, replace=False)
    return idx, gold[idx]


def _fail(rng: np.random.Generator, probs: np.ndarray, share: float) -> np.ndarray:
    out = probs.copy()
    out[rng.random(len(out)) < share] = np.nan
    return out


def _cfg(method: str, calibration: str = "temperature") -> LabelModelConfig:
    return LabelModelConfig(method=method, calibration=calibration)


def _snorkel_importable() -> bool:
    try:
        import snorkel.labeling.model  # noqa: F401
    except ImportError:
        return False
    return True


# decided once, at collection: the "snorkel missing" test hides the module from sys.modules, and
# a check made after it (in a random order) would wrongly skip the snorkel tests
_HAS_SNORKEL = _snorkel_importable()


def _has_snorkel() -> bool:
    return _HAS_SNORKEL


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_cools_an_over_confident_teacher(seed):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(K), size=200)  # calibrated by construction: gold drawn from q
    gold = (rng.random((200, 1)) > q.cumsum(axis=1)).sum(axis=1).clip(0, K - 1)
    sharp = q ** 3 / (q ** 3).sum(axis=1, keepdims=True)  # the same teacher, over-confident
    cal = fit_calibration(sharp, gold, "temperature")
    assert cal.temperature > 1.5
    assert cal.nll_after < cal.nll_before
    assert cal.ece_after < cal.ece_before
    assert np.array_equal(cal.apply(sharp).argmax(1), sharp.argmax(1))
    both = fit_calibration(sharp, gold, "temperature_bias")
    assert both.nll_after <= cal.nll_after + 1e-9  # b = 0 is in its search space
    assert both.bias.shape == (K,) and abs(both.bias.sum()) < 1e-2  # the L2 pins the constant


@pytest.mark.parametrize("mode", ["temperature", "temperature_bias"])
def test_one_hot_teacher_becomes_soft_at_its_accuracy(mode):
    rng = np.random.default_rng(3)
    gold = _gold(rng, 200)
    hard = _hard(rng, gold, _symmetric(0.65))
    cal = fit_calibration(hard, gold, mode)
    soft = cal.apply(hard)
    assert cal.temperature > 1 and (soft > 0.01).all()
    assert np.allclose(soft.sum(1), 1)
    if mode == "temperature":  # one confidence for every row: the anchor accuracy (the NLL MLE)
        assert abs(soft.max(1).mean() - _acc(hard, gold)) < 0.01
    assert cal.nll_after < cal.nll_before


def test_calibration_none_apply_and_to_dict():
    rng = np.random.default_rng(4)
    gold = _gold(rng, 50)
    probs = _soft(rng, gold)
    none = fit_calibration(probs, gold, "none")
    assert none.temperature == 1 and not none.bias.any()
    assert np.array_equal(none.apply(probs), probs)
    cal = fit_calibration(probs, gold, "temperature")
    with_nan = probs.copy()
    with_nan[[0, 7]] = np.nan
    out = cal.apply(with_nan)
    assert np.isnan(out[[0, 7]]).all() and np.allclose(np.delete(out, [0, 7], 0).sum(1), 1)
    d = json.loads(json.dumps(cal.to_dict(), allow_nan=False))
    assert set(d) >= {"temperature", "bias", "ece_before", "ece_after"} and len(d["bias"]) == K
    assert isinstance(cal, Calibration)
    with pytest.raises(DataError):
        cal.apply(probs[:, :2])


# ---------------------------------------------------------------- aggregate: every method


def _three_teachers(seed: int, n: int = 1500, fail: float = 0.1):
    rng = np.random.default_rng(seed)
    gold = _gold(rng, n)
    teachers = [_fail(rng, _hard(rng, gold, _symmetric(0.65)), fail),
                _fail(rng, _soft(rng, gold), fail),
                _fail(rng, _hard(rng, gold, _symmetric(0.6)), fail)]
    teachers[0][:5] = teachers[1][:5] = teachers[2][:5] = np.nan  # nobody answered these
    return rng, gold, teachers


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_probability_rows_and_nan_only_without_answers(method):
    if method == "snorkel" and not _has_snorkel():
        pytest.skip("snorkel is not installed (pip install snorkel)")
    rng, gold, teachers = _three_teachers(5)
    idx, agold = _anchor(rng, gold)
    agg = aggregate(teachers, LABELS, _cfg(method), idx, agold, seed=1)
    none = np.stack([np.isnan(t).all(1) for t in teachers], 1).all(1)
    assert agg.probs.shape == (len(gold), K)
    assert np.isnan(agg.probs[none]).all() and np.isnan(agg.entropy[none]).all()
    rest = agg.probs[~none]
    assert np.isfinite(rest).all() and (rest >= 0).all() and np.allclose(rest.sum(1), 1)
    ent = agg.entropy[~none]
    assert (ent >= -1e-12).all() and (ent <= np.log(K) + 1e-9).all()
    info = json.loads(json.dumps(agg.info, allow_nan=False))
    assert info["method"] == method and info["calibration"]["fitted"]
    assert len(info["calibration"]["teachers"]) == 3 and len(info["teachers"]) == 3
    assert info["anchor_accuracy"]["kind"] in {"in_sample", "out_of_fold"}
    assert 0 <= info["anchor_accuracy"]["value"] <= 1
    assert _acc(rest, gold[~none]) > 0.55  # better than the 40% majority class by far


def test_first_falls_back_to_the_others_and_mean_is_the_mean():
    _, gold, teachers = _three_teachers(6)
    first = aggregate(teachers, LABELS, _cfg("first", "temperature")).probs
    mean = aggregate(teachers, LABELS, _cfg("mean", "none")).probs
    answered = np.stack([~np.isnan(t).all(1) for t in teachers], 1)
    total = sum(np.nan_to_num(t) for t in teachers)
    some = answered.any(1)
    assert np.allclose(mean[some], total[some] / answered[some].sum(1, keepdims=True))
    assert np.allclose(first[answered[:, 0]], teachers[0][answered[:, 0]])
    fallback = ~answered[:, 0] & some
    others = sum(np.nan_to_num(t) for t in teachers[1:])
    assert fallback.any() and np.allclose(
        first[fallback], others[fallback] / answered[fallback, 1:].sum(1, keepdims=True))


def test_no_anchor_skips_calibration_and_stacked_needs_one():
    _, gold, teachers = _three_teachers(7)
    agg = aggregate(teachers, LABELS, _cfg("mean"))
    cal = agg.info["calibration"]
    assert not cal["fitted"] and "no anchor" in cal["skipped"]
    assert agg.info["anchor_accuracy"]["value"] is None
    ds = aggregate(teachers, LABELS, _cfg("dawid_skene"))
    assert ds.info["dawid_skene"]["initialised_from"] == "teacher_mean"
    with pytest.raises(UsageError, match="anchor"):
        aggregate(teachers, LABELS, _cfg("stacked"))


# ---------------------------------------------------------------- dawid_skene


@pytest.mark.parametrize("with_anchor", [True, False])
def test_dawid_skene_recovers_confusion_matrices(with_anchor):
    rng = np.random.default_rng(8)
    gold = _gold(rng, 8000)  # the latent-class estimate is noisier than a labelled count
    confs = [np.array([[0.7, 0.2, 0.1], [0.25, 0.55, 0.2], [0.1, 0.2, 0.7]]),
             _symmetric(0.6),
             np.array([[0.8, 0.15, 0.05], [0.3, 0.6, 0.1], [0.05, 0.15, 0.8]])]
    teachers = [_hard(rng, gold, c) for c in confs]
    idx, agold = _anchor(rng, gold) if with_anchor else (None, None)
    agg = aggregate(teachers, LABELS, _cfg("dawid_skene", "none"), idx, agold)
    ds = agg.info["dawid_skene"]
    err = np.abs(np.array(ds["confusion"]) - np.array(confs))
    assert err.mean() < 0.03 and err.max() < 0.12  # 60 seeds: mean ≤ 0.02, max ≤ 0.075
    by_class = np.abs(np.array(ds["mean_answer_by_class"]) - np.array(confs))
    assert by_class.mean() < 0.03  # one-hot answers: the same matrices, read off the posterior
    assert np.abs(np.array(ds["class_prior"]) - PRIOR).max() < 0.1
    assert _acc(agg.probs, gold) > min(_acc(t, gold) for t in teachers) + 0.05
    if with_anchor:
        assert ds["anchor_clamped_rows"] == 200
        assert agg.info["anchor_accuracy"]["kind"] == "in_sample"
        assert agg.info["anchor_accuracy"]["value"] < 1  # unclamped: not the gold copied back


# ---------------------------------------------------------------- beating the better teacher


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_independent_teachers_beat_the_better_one(seed):
    rng = np.random.default_rng(seed)
    gold = _gold(rng, 6000)
    hard, soft = _hard(rng, gold, _symmetric(0.65)), _soft(rng, gold)
    idx, agold = _anchor(rng, gold)
    best = max(_acc(hard, gold), _acc(soft, gold))
    for method in ("mean", "dawid_skene", "stacked"):
        agg = aggregate([hard, soft], LABELS, _cfg(method), idx, agold, seed=seed)
        assert _acc(agg.probs, gold) > best + 0.02, method


def test_stacked_gives_the_anchor_out_of_fold_labels():
    rng = np.random.default_rng(9)
    gold = _gold(rng, 2000)
    teachers = [_hard(rng, gold, _symmetric(0.65)), _soft(rng, gold)]
    idx, agold = _anchor(rng, gold)
    agg = aggregate(teachers, LABELS, _cfg("stacked"), idx, agold)
    st = agg.info["stacked"]
    assert st["C"] in st["Cs"] and st["folds"] == 5 and st["features"] == 2 * K + 2
    assert 0.5 < st["anchor_accuracy_out_of_fold"] < 1
    assert agg.info["anchor_accuracy"]["kind"] == "out_of_fold"
    assert agg.probs[idx].max(1).mean() < 0.95  # not one-hot copies of the gold


# ---------------------------------------------------------------- snorkel


def test_snorkel_votes_and_leaves_global_random_state_alone():
    if not _has_snorkel():
        pytest.skip("snorkel is not installed (pip install snorkel)")
    rng, gold, teachers = _three_teachers(10, n=2000, fail=0.05)
    idx, agold = _anchor(rng, gold)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    agg = aggregate(teachers, LABELS, _cfg("snorkel"), idx, agold)
    assert np.array_equal(np.random.get_state()[1], before)
    ok = ~np.isnan(agg.probs).all(1)
    worst = min(_acc(np.nan_to_num(t[ok]), gold[ok]) for t in teachers)
    assert _acc(agg.probs[ok], gold[ok]) > worst
    assert len(agg.info["snorkel"]["class_balance"]) == K


def test_snorkel_missing_or_too_few_teachers_raise(monkeypatch):
    _, gold, teachers = _three_teachers(11, n=300)
    with pytest.raises(UsageError, match="at least 3 teachers"):
        aggregate(teachers[:2], LABELS, _cfg("snorkel", "none"))
    monkeypatch.setitem(sys.modules, "snorkel.labeling.model", None)
    with pytest.raises(UsageError, match="pip install snorkel"):
        aggregate(teachers, LABELS, _cfg("snorkel", "none"))


# ---------------------------------------------------------------- bad input


def _bad_inputs():
    rng = np.random.default_rng(12)
    gold = _gold(rng, 100)
    a, b = _hard(rng, gold, _symmetric(0.7)), _soft(rng, gold)
    idx = np.arange(30)
    partly = b.copy()
    partly[3, 1] = np.nan
    negative = b.copy()
    negative[2] = [1.5, -0.5, 0.0]
    unnormalised = b * 2
    return [
        ("k", [a, b[:, :2]], LABELS, "mean", None, None, DataError),
        ("labels", [a, b], LABELS[:2], "mean", None, None, DataError),
        ("n", [a, b[:90]], LABELS, "mean", None, None, DataError),
        ("none", [], LABELS, "mean", None, None, UsageError),
        ("gold_range", [a, b], LABELS, "mean", idx, np.full(30, K), DataError),
        ("gold_float", [a, b], LABELS, "mean", idx, gold[idx].astype(float), DataError),
        ("index_range", [a, b], LABELS, "mean", idx + 80, gold[idx], DataError),
        ("index_dup", [a, b], LABELS, "mean", np.zeros(30, int), gold[idx], DataError),
        ("index_len", [a, b], LABELS, "mean", idx[:10], gold[idx], DataError),
        ("half_anchor", [a, b], LABELS, "mean", idx, None, UsageError),
        ("partly_nan", [a, partly], LABELS, "mean", None, None, DataError),
        ("negative", [a, negative], LABELS, "mean", None, None, DataError),
        ("unnormalised", [a, unnormalised], LABELS, "mean", None, None, DataError),
        ("one_class", [a, b], LABELS, "stacked", idx, np.zeros(30, int), DataError),
        ("singleton_class", [a, b], LABELS, "stacked", idx,
         np.r_[np.zeros(15, int), np.ones(14, int), [2]], DataError),
    ]


@pytest.mark.parametrize("case", _bad_inputs(), ids=lambda c: c[0])
def test_bad_input_raises_one_line(case):
    _, teachers, labels, method, idx, gold, error = case
    with pytest.raises(error) as e:
        aggregate(teachers, labels, _cfg(method), idx, gold)
    assert "\n" not in str(e.value) and ":" in str(e.value)


def test_fit_calibration_bad_input():
    rng = np.random.default_rng(13)
    gold = _gold(rng, 40)
    probs = _soft(rng, gold)
    with pytest.raises(UsageError, match="calibration"):
        fit_calibration(probs, gold, "platt")
    with pytest.raises(DataError):
        fit_calibration(probs[:30], gold, "temperature")
    nan = probs.copy()
    nan[0] = np.nan
    with pytest.raises(DataError):
        fit_calibration(nan, gold, "temperature")
    with pytest.raises(DataError):
        fit_calibration(probs, gold + K, "temperature")


def test_auto_method_follows_the_benchmarks_choice_by_teacher_count_and_anchor():
    from llmdistill.config import LabelModelConfig
    from llmdistill.label_model import resolve_method

    auto = LabelModelConfig()
    assert (resolve_method(auto, 1, True).method, resolve_method(auto, 1, True).calibration) == \
        ("first", "temperature")
    assert resolve_method(auto, 2, True).method == "stacked"
    assert resolve_method(auto, 3, False).method == "mean"
    explicit = LabelModelConfig(method="dawid_skene")
    assert resolve_method(explicit, 1, True) is explicit


# ---------------------------------------------------------------- multi-label


ML_K = 4
ML_LABELS = ["billing", "bug", "praise", "shipping"]


def _multi(seed: int, n: int = 600, teachers: int = 2, sharpen: float = 1.0, fail: float = 0.1):
    """Gold label sets (each label on with its own rate) and soft teachers that are right about
    each label independently; `sharpen` > 1 makes them over-confident."""
    rng = np.random.default_rng(seed)
    gold = (rng.random((n, ML_K)) < np.array([0.3, 0.4, 0.2, 0.5])).astype(float)
    out = []
    for _ in range(teachers):
        z = sharpen * (2.0 * (2 * gold - 1) + rng.normal(scale=1.5, size=gold.shape))
        p = 1 / (1 + np.exp(-z))
        p[rng.random(n) < fail] = np.nan
        out.append(p)
    return gold, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_label_mean_and_first_work_per_label(seed):
    gold, probs = _multi(seed)
    none = LabelModelConfig(method="mean", calibration="none")
    mean = aggregate(probs, ML_LABELS, none, task="multi_label")
    answered = [~np.isnan(p).all(axis=1) for p in probs]
    both = answered[0] & answered[1]
    np.testing.assert_allclose(mean.probs[both], (probs[0][both] + probs[1][both]) / 2)
    only1 = ~answered[0] & answered[1]
    np.testing.assert_allclose(mean.probs[only1], probs[1][only1])
    assert np.isnan(mean.probs[~(answered[0] | answered[1])]).all()
    ok = ~np.isnan(mean.probs).any(axis=1)
    assert ((mean.probs[ok] >= 0) & (mean.probs[ok] <= 1)).all()
    assert not np.allclose(mean.probs[ok].sum(axis=1), 1)  # independent, never renormalised
    assert (mean.entropy[ok] >= 0).all() and (mean.entropy[ok] <= ML_K * np.log(2) + 1e-9).all()
    first = aggregate(probs, ML_LABELS, LabelModelConfig(method="first", calibration="none"),
                      task="multi_label")
    np.testing.assert_allclose(first.probs[answered[0]], probs[0][answered[0]])
    assert first.info["first"]["fallback_rows"] == int(only1.sum())
    # two independent teachers averaged: per-label accuracy at least the better one's
    acc = [((p[both] >= 0.5) == (gold[both] > 0.5)).mean() for p in probs]
    assert ((mean.probs[both] >= 0.5) == (gold[both] > 0.5)).mean() >= min(acc) - 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_multi_label_temperature_cools_an_over_confident_teacher_per_label(seed):
    rng = np.random.default_rng(seed)
    q = rng.beta(0.7, 1.2, size=(600, ML_K))  # calibrated by construction: gold drawn from q
    gold = (rng.random(q.shape) < q).astype(float)
    logit = np.log(q) - np.log1p(-q)
    probs = 1 / (1 + np.exp(-3 * logit))  # the same teacher, over-confident
    idx = rng.choice(len(gold), size=200, replace=False)
    agg = aggregate([probs], ML_LABELS, LabelModelConfig(method="first", calibration="temperature"),
                    anchor_index=idx, anchor_gold=gold[idx], task="multi_label")
    cal = agg.info["calibration"]["teachers"][0]
    assert all(t > 1.5 for t in cal["temperatures"]) and cal["labels_skipped"] == []
    assert cal["nll_after"] < cal["nll_before"]
    # a temperature keeps every decision at 0.5: the per-label answers are unchanged
    assert np.array_equal(agg.probs >= 0.5, probs >= 0.5)
    info = json.loads(json.dumps(agg.info, allow_nan=False))
    assert info["anchor_accuracy"]["kind"] == "in_sample" and 0 <= info["anchor_accuracy"][
        "value"] <= 1


def test_multi_label_skips_calibrating_a_label_the_anchor_barely_holds():
    gold, [probs] = _multi(5, teachers=1, fail=0.0)
    gold[:, 2] = 0.0
    gold[:2, 2] = 1.0  # two positives of label 2 in the whole anchor
    idx = np.arange(200)
    agg = aggregate([probs], ML_LABELS, LabelModelConfig(method="first",
                                                         calibration="temperature_bias"),
                    anchor_index=idx, anchor_gold=gold[idx], task="multi_label")
    cal = agg.info["calibration"]["teachers"][0]
    assert cal["labels_skipped"] == ["praise"]
    np.testing.assert_allclose(agg.probs[:, 2], probs[:, 2])  # left as the teacher gave it


def test_multi_label_auto_picks_first_for_one_teacher_and_mean_for_several():
    gold, probs = _multi(7)
    assert aggregate(probs[:1], ML_LABELS, task="multi_label").info["method"] == "first"
    idx = np.arange(100)
    two = aggregate(probs, ML_LABELS, anchor_index=idx, anchor_gold=gold[idx],
                    task="multi_label")
    assert two.info["method"] == "mean" and two.info["task"] == "multi_label"


@pytest.mark.parametrize("method", ["dawid_skene", "stacked", "snorkel"])
def test_multi_label_refuses_the_methods_that_need_exclusive_labels(method):
    _, probs = _multi(8)
    with pytest.raises(UsageError, match="does not support multi_label: use first or mean") as e:
        aggregate(probs, ML_LABELS, LabelModelConfig(method=method), task="multi_label")
    assert "\n" not in str(e.value)


def test_multi_label_bad_inputs_are_one_line_data_errors():
    gold, probs = _multi(9)
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        aggregate([probs[0] * 2], ML_LABELS, task="multi_label")
    with pytest.raises(DataError, match="0/1"):
        aggregate(probs, ML_LABELS, anchor_index=np.arange(5), anchor_gold=np.arange(5),
                  task="multi_label")
