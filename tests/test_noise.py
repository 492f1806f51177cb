"""Noise-aware distillation: the anchor's confusion estimate, the corrections, the new loss terms,
and length-grouped batches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from llmdistill.config import StudentConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.student.losses import distillation_loss, example_weights
from llmdistill.student.noise import (
    class_factors,
    estimate_noise,
    fold_into_bias,
    prior_shift,
    sample_anchor,
    with_gold_targets,
)
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.train import LengthGroupedBatches, train_student

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def noisy_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Gold balanced; the teacher says neutral for only half the neutral texts (else positive)."""
    rng = np.random.default_rng(seed)
    gold = np.array(LABELS)[np.arange(n) % 3]
    teacher = gold.copy()
    flip = (gold == "neutral") & (rng.random(n) < 0.5)
    teacher[flip] = "positive"
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)],
                         "gold": gold, "label": teacher, "status": "ok"})


# ---- the anchor and the estimate --------------------------------------------------------------

def test_anchor_is_a_seeded_stratified_sample_of_gold_ok_rows() -> None:
    frame = noisy_frame()
    frame.loc[:9, "status"] = "error"
    frame.loc[10:19, "gold"] = None
    a = sample_anchor(frame, 60, seed=1)
    assert len(a) == 60 and a["status"].eq("ok").all() and a["gold"].notna().all()
    assert a["gold"].value_counts().to_dict() == {"negative": 20, "neutral": 20, "positive": 20}
    assert a["id"].tolist() == sample_anchor(frame, 60, seed=1)["id"].tolist()
    assert a["id"].tolist() != sample_anchor(frame, 60, seed=2)["id"].tolist()
    assert len(sample_anchor(frame, 10_000, seed=1)) == 280  # all usable rows
    with pytest.raises(DataError, match="gold"):
        sample_anchor(frame.drop(columns="gold"), 10, seed=1)


def test_confusion_is_estimated_with_add_one_smoothing() -> None:
    anchor = pd.DataFrame({"gold": ["neutral"] * 4 + ["positive"] * 2 + ["negative"],
                           "label": ["neutral", "positive", "positive", "negative",
                                     "positive", "positive", "negative"], "status": "ok"})
    est = estimate_noise(anchor, LABELS)
    assert est.anchor_size == 7
    np.testing.assert_array_equal(est.counts, [[1, 0, 0], [1, 1, 2], [0, 0, 2]])
    np.testing.assert_allclose(est.transition[1], [2 / 7, 2 / 7, 3 / 7])
    np.testing.assert_allclose(est.transition[0], [2 / 4, 1 / 4, 1 / 4])
    np.testing.assert_allclose(est.transition.sum(axis=1), 1.0)
    np.testing.assert_allclose(est.gold_prior, [2 / 10, 5 / 10, 3 / 10])
    assert est.teacher_agreement == pytest.approx(4 / 7)
    assert json.dumps(est.to_dict())  # JSON-ready for the record


def test_prior_shift_is_the_centred_log_ratio() -> None:
    shift = prior_shift(np.array([0.3, 0.4, 0.3]), np.array([0.4, 0.2, 0.4]))
    raw = np.log([0.3 / 0.4, 0.4 / 0.2, 0.3 / 0.4])
    np.testing.assert_allclose(shift, raw - raw.mean())
    probs = np.array([[0.45, 0.2, 0.35]])
    shifted = torch.softmax(torch.tensor(np.log(probs) + shift), -1).numpy()
    assert shifted.argmax() == 1  # neutral, under-predicted by the teacher, now wins


def test_shift_is_folded_into_the_classifier_bias() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=20, num_labels=3)).eval()
    ids = torch.tensor([[1, 5, 7, 2]])
    before = model(input_ids=ids).logits
    assert fold_into_bias(model, np.array([0.5, -1.0, 0.5])) == "classifier"
    after = model(input_ids=ids).logits
    torch.testing.assert_close(after - before, torch.tensor([[0.5, -1.0, 0.5]]))
    with pytest.raises(UsageError, match="bias"):
        fold_into_bias(torch.nn.Linear(4, 3, bias=False), np.zeros(3))


def test_class_factors() -> None:
    ids = np.array([0] * 50 + [1] * 10 + [2] * 40)
    balanced = class_factors("balanced", ids, 3, None)
    assert balanced[1] > balanced[2] > balanced[0]
    assert class_factors("none", ids, 3, None) is None
    est = estimate_noise(noisy_frame(), LABELS)
    anchor = class_factors("anchor", ids, 3, est)
    np.testing.assert_allclose(anchor, est.gold_prior / ((np.array([50, 10, 40]) + 1) / 103))
    with pytest.raises(UsageError, match="anchor"):
        class_factors("anchor", ids, 3, None)


# ---- the loss ---------------------------------------------------------------------------------

def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=g), torch.softmax(torch.randn(6, 3, generator=g) * 2, -1)


def test_identity_transition_unit_weights_and_no_smoothing_change_nothing() -> None:
    logits, teacher = _batch()
    plain = distillation_loss(logits, teacher, 0.4, 2.0)
    same = distillation_loss(logits, teacher, 0.4, 2.0, weights=torch.ones(6),
                             transition=torch.eye(3), label_smoothing=0.0)
    assert same.item() == pytest.approx(plain.item(), rel=1e-5)


def test_forward_correction_scores_the_noisy_distribution() -> None:
    logits, teacher = _batch()
    t = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    noisy = torch.softmax(logits, -1) @ t
    expected = F.nll_loss(noisy.log(), teacher.argmax(-1))
    got = distillation_loss(logits, teacher, 0.0, 1.0, transition=t)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_label_smoothing_matches_torch_on_the_hard_term() -> None:
    logits, teacher = _batch()
    expected = F.cross_entropy(logits, teacher.argmax(-1), label_smoothing=0.1)
    got = distillation_loss(logits, teacher, 0.0, 1.0, label_smoothing=0.1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_scale_each_example() -> None:
    logits, teacher = _batch()
    w = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    each = torch.stack([distillation_loss(logits[i:i + 1], teacher[i:i + 1], 0.5, 2.0)
                        for i in range(6)])
    got = distillation_loss(logits, teacher, 0.5, 2.0, weights=w)
    assert got.item() == pytest.approx((each * w).mean().item(), rel=1e-5)


def test_example_weights_have_mean_one_and_vanish_when_uniform() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8]])
    w = example_weights(probs, confidence=True, class_factors=None)
    assert w.mean() == pytest.approx(1.0) and w[0] > w[2] > w[1]
    assert example_weights(np.eye(3), confidence=True, class_factors=None) is None
    w = example_weights(np.eye(3), confidence=False, class_factors=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(w, [0.5, 1.0, 1.5])


# ---- length-grouped batches -------------------------------------------------------------------

def test_length_grouped_batches_cover_every_text_once_in_a_seeded_order() -> None:
    lengths = list(np.random.default_rng(0).integers(3, 60, 203))
    s = LengthGroupedBatches(lengths, global_batch=16, seed=5, mega=4)
    order = list(s)
    assert sorted(order) == list(range(203)) and len(s) == 203
    assert list(LengthGroupedBatches(lengths, 16, seed=5, mega=4)) == order
    s.set_epoch(1)
    assert list(s) != order
    batches = [order[i:i + 16] for i in range(0, 192, 16)]
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 0.5 * np.ptp(lengths)  # similar lengths together: little padding
    assert len(order[192:]) == 11  # the one short batch comes last


# ---- training with an anchor ------------------------------------------------------------------

def tiny_cfg(model_dir: Path, **overrides) -> StudentConfig:
    base = {"model": str(model_dir), "epochs": 3, "batch_size": 16, "learning_rate": 3e-3,
            "warmup_ratio": 0.2, "max_length": 32, "threads": 1, "anchor_size": 60}
    return StudentConfig(**{**base, **overrides})


def test_prior_correction_is_folded_into_the_saved_model(tiny_bert_dir, toy_annotations,
                                                         tmp_path) -> None:
    train, validation = toy_annotations(120, seed=1), toy_annotations(30, seed=2)
    # the teacher calls two thirds of the neutral texts positive; the anchor's gold knows better
    flip = (train["gold"] == "neutral") & (np.arange(len(train)) % 3 != 0)
    train.loc[flip, ["label", "prob_neutral", "prob_positive"]] = ["positive", 0.1, 0.8]
    out = tmp_path / "s"
    cfg = tiny_cfg(tiny_bert_dir).model_copy(update={"anchor_targets": "teacher"})
    result = train_student(train, validation, LABELS, cfg, out, anchor=train)
    noise = result.noise
    assert noise["anchor_size"] == 60 and noise["prior_correction"]
    assert noise["shift_folded_into"] == "classifier.bias"
    assert noise["prior_shift"][1] > 0.3  # neutral is pushed up
    expected = prior_shift(np.array(noise["anchor_gold_prior"]),
                           np.array(noise["student_prior_on_validation"]))
    np.testing.assert_allclose(noise["prior_shift"], expected, atol=1e-3)
    assert sum(map(sum, noise["teacher_confusion_counts"])) == 60
    record = json.loads((out / "llmdistill.json").read_text())
    assert record["noise"]["prior_shift"] == noise["prior_shift"]
    assert "60 gold-labelled training texts" in (out / "README.md").read_text()
    assert result.flop_bound_samples_per_second > 0 and result.peak_gflops > 0
    assert 5 < result.tokens_per_text < 15
    probs = StudentClassifier.load(out).predict_proba(validation["text"].tolist())
    assert probs.shape == (30, 3)


def test_forward_correction_and_weights_train(tiny_bert_dir, toy_annotations, tmp_path) -> None:
    train, validation = toy_annotations(120, seed=1), toy_annotations(30, seed=2)
    cfg = tiny_cfg(tiny_bert_dir, forward_correction=True, prior_correction=False,
                   label_smoothing=0.1, confidence_weighting=True, class_weights="anchor")
    result = train_student(train, validation, LABELS, cfg, tmp_path / "s", anchor=train)
    assert result.noise["forward_correction"] and result.noise["weights_vary"]
    assert "prior_shift" not in result.noise
    assert result.validation_agreement >= 0.6  # chance is 1/3


def test_without_an_anchor_gold_is_not_read_and_anchor_options_are_skipped(
        tiny_bert_dir, toy_annotations, tmp_path, caplog) -> None:
    train, validation = toy_annotations(60, seed=1), toy_annotations(15, seed=2)
    cfg = tiny_cfg(tiny_bert_dir, epochs=1, forward_correction=True, class_weights="anchor")
    with caplog.at_level(logging.WARNING, logger="llmdistill.student.train"):
        result = train_student(train, validation, LABELS, cfg, tmp_path / "s")
    assert "no anchor set" in caplog.text
    assert result.noise["anchor_size"] == 0 and not result.noise["prior_correction"]
    assert not result.noise["forward_correction"] and result.noise["class_weights"] == "none"


def test_an_anchor_overlapping_validation_is_refused(tiny_bert_dir, toy_annotations, tmp_path):
    train, validation = toy_annotations(60, seed=1), toy_annotations(15, seed=2)
    with pytest.raises(DataError, match="training rows only"):
        train_student(train, validation, LABELS, tiny_cfg(tiny_bert_dir, anchor_size=75),
                      tmp_path / "s", anchor=pd.concat([train, validation]))


def test_anchor_rows_train_on_their_gold_label_and_the_rest_on_the_teacher(toy_annotations):
    frame = toy_annotations(30, seed=6)
    frame["gold"] = frame["label"].map({"negative": "positive", "neutral": "neutral",
                                        "positive": "negative"})  # a teacher that is wrong
    anchor = sample_anchor(frame, 9, seed=0)
    before = frame.copy()
    out = with_gold_targets(frame, anchor, LABELS)
    cols = [f"prob_{lab}" for lab in LABELS]
    is_anchor = out["id"].isin(anchor["id"])
    assert is_anchor.sum() == 9
    assert (out.loc[is_anchor, "label"] == out.loc[is_anchor, "gold"]).all()
    hot = out.loc[is_anchor, cols].to_numpy()
    assert set(np.unique(hot)) == {0.0, 1.0} and (hot.sum(axis=1) == 1).all()
    pd.testing.assert_frame_equal(out.loc[~is_anchor], frame.loc[~is_anchor])
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame is not modified


def test_multilabel_anchor_noise_is_counted_per_label_and_gold_trains_multi_hot() -> None:
    from llmdistill.student.noise import estimate_multilabel_noise, with_gold_targets

    labels = ["a", "b", "c"]
    frame = pd.DataFrame({"id": ["1", "2", "3", "4"], "status": "ok",
                          "label": ["a|b", "", "c", "a"], "gold": ["a", "b", "c", "a|c"],
                          "prob_a": 0.6, "prob_b": 0.6, "prob_c": 0.2})
    noise = estimate_multilabel_noise(frame, labels)
    assert noise.task == "multi_label" and noise.anchor_size == 4
    assert noise.counts.shape == (3, 2, 2) and noise.counts.sum() == 12
    assert noise.counts[1].tolist() == [[2, 1], [1, 0]]  # label b: gold no/yes × teacher no/yes
    hits, both = 3, 5 + 4  # a: 2 (rows 1, 4), c: 1; gold has 5 labels, the teacher 4
    assert noise.teacher_agreement == pytest.approx(2 * hits / both)
    out = with_gold_targets(frame, frame.iloc[[0, 3]], labels, task="multi_label")
    assert out["label"].tolist() == ["a", "", "c", "a|c"]
    assert out.loc[3, ["prob_a", "prob_b", "prob_c"]].tolist() == [1.0, 0.0, 1.0]
    assert out.loc[1, "prob_a"] == 0.6  # not an anchor row: the teacher's


def test_multilabel_confidence_weights_by_the_mean_per_label_confidence() -> None:
    from llmdistill.student.losses import example_weights

    probs = np.array([[0.9, 0.1], [0.5, 0.5]])
    w = example_weights(probs, True, None, exclusive=False)
    np.testing.assert_allclose(w, np.array([0.9, 0.5]) / 0.7)
