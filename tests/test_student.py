"""The student: distillation loss, training with the Trainer, the model folder, inference."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from llmdistill.config import StudentConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.student.losses import distillation_loss
from llmdistill.student.model_card import update_metrics
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.record import RESULT_FIELDS
from llmdistill.student.train import TrainResult, train_student

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """Training sets torch's process-wide thread count (one thread: tiny models, busy CI)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_cfg(model_dir: Path, **overrides) -> StudentConfig:
    """Settings under which the tiny random encoders learn the toy task in seconds."""
    base = {"model": str(model_dir), "epochs": 8, "batch_size": 16, "learning_rate": 3e-3,
            "warmup_ratio": 0.2, "early_stopping_patience": 3, "max_length": 32, "threads": 1}
    return StudentConfig(**{**base, **overrides})


# ---- the loss ---------------------------------------------------------------------------------

def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g)
    teacher = torch.softmax(torch.randn(5, 3, generator=g) * 2, dim=-1)
    return logits, teacher


def test_distillation_loss_is_zero_with_zero_gradient_when_student_matches_teacher() -> None:
    _, teacher = _batch()
    logits = teacher.log().clone().requires_grad_(True)
    loss = distillation_loss(logits, teacher, alpha=1.0, temperature=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert logits.grad.abs().max().item() < 1e-6


def test_distillation_loss_equals_cross_entropy_on_teacher_argmax_when_alpha_is_zero() -> None:
    logits, teacher = _batch()
    expected = -torch.log_softmax(logits, -1)[torch.arange(5), teacher.argmax(-1)].mean()
    got = distillation_loss(logits, teacher, alpha=0.0, temperature=3.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_distillation_loss_equals_t_squared_kl_at_temperature_when_alpha_is_one() -> None:
    logits, teacher = _batch()
    t = 2.5
    p_t = torch.softmax(teacher.log() / t, -1)
    q_t = torch.softmax(logits / t, -1)
    kl = (p_t * (p_t.log() - q_t.log())).sum(-1).mean()
    got = distillation_loss(logits, teacher, alpha=1.0, temperature=t)
    assert got.item() == pytest.approx((t * t * kl).item(), rel=1e-5)


def test_distillation_loss_mixes_the_two_terms_by_alpha() -> None:
    logits, teacher = _batch()
    soft = distillation_loss(logits, teacher, alpha=1.0, temperature=2.0)
    hard = distillation_loss(logits, teacher, alpha=0.0, temperature=2.0)
    mixed = distillation_loss(logits, teacher, alpha=0.3, temperature=2.0)
    assert mixed.item() == pytest.approx(0.3 * soft.item() + 0.7 * hard.item(), rel=1e-5)


def test_distillation_loss_stays_finite_when_the_teacher_gives_exact_zeros() -> None:
    logits = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    loss = distillation_loss(logits, teacher, alpha=0.5, temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(
        0.5 * F.kl_div(torch.log_softmax(logits, -1), teacher.clamp_min(1e-8).div(
            teacher.clamp_min(1e-8).sum(-1, keepdim=True)), reduction="batchmean").item()
        + 0.5 * F.cross_entropy(logits, teacher.argmax(-1)).item(), rel=1e-4)


# ---- training ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, toy_split_m):
    """One tiny BERT student trained on the toy task, shared by the tests that inspect it."""
    train, validation = toy_split_m
    out = tmp_path_factory.mktemp("bert-run") / "student"
    manifest = {"teacher": {"spec": "toy-teacher"}, "data": {"source": "toy"},
                "metrics": {"test": {"accuracy": 0.75, "macro_f1": 0.7}}}
    result = train_student(train, validation, LABELS, tiny_cfg(tiny_bert_dir), out, manifest)
    return result, out


@pytest.fixture(scope="module")
def toy_split_m(toy_annotations) -> tuple[pd.DataFrame, pd.DataFrame]:
    return toy_annotations(120, seed=1), toy_annotations(30, seed=2)


def test_training_learns_a_separable_toy_task(trained) -> None:
    result, out = trained
    assert isinstance(result, TrainResult)
    assert result.model_dir == out
    assert result.validation_agreement >= 0.8  # chance is 1/3
    assert result.used == 120 and result.skipped == 0
    assert 1 <= result.best_epoch <= 8
    assert result.samples_per_second > 0 and result.train_seconds > 0
    assert 500_000 < result.parameters < 2_000_000


def test_training_leaves_only_the_model_folder_behind(trained) -> None:
    _, out = trained
    assert [p.name for p in out.parent.iterdir()] == ["student"]


def test_model_folder_loads_with_transformers_pipeline(trained) -> None:
    from transformers import pipeline

    _, out = trained
    assert (out / "model.safetensors").exists()
    assert not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    texts = ["so great and happy today", "awful terrible day", "the meeting is on tuesday"]
    clf = pipeline("text-classification", model=str(out), top_k=None)
    preds = clf(texts, truncation=True)
    # The plain HF pipeline (no llmdistill) gives the same probabilities as llmdistill's loader:
    # a property of the folder, whichever labels this tiny model happens to predict.
    ours = StudentClassifier.load(out, backend="torch").predict_proba(texts)
    for row, p in zip(preds, ours, strict=True):
        theirs = {d["label"]: d["score"] for d in row}
        assert set(theirs) == set(LABELS)
        assert [theirs[lab] for lab in LABELS] == pytest.approx(list(p), abs=1e-5)


def test_model_folder_carries_a_model_card_and_the_run_record(trained) -> None:
    result, out = trained
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "Apache-2.0" in card and 'pipeline("text-classification"' in card
    assert "toy-teacher" in card and "test.macro_f1" in card and "temperature" in card
    record = json.loads((out / "llmdistill.json").read_text())
    assert record["labels"] == LABELS
    assert record["used"] == result.used
    assert record["validation_agreement"] == pytest.approx(result.validation_agreement)
    assert record["metrics"]["test"]["accuracy"] == 0.75
    assert record["student_config"]["max_length"] == 32


def test_metrics_known_after_training_can_be_added_to_the_card(trained, tmp_path) -> None:
    _, out = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    update_metrics(copy, {"test": {"accuracy": 0.625, "neutral_recall": 0.5}})
    card = (copy / "README.md").read_text()
    assert "test.neutral_recall | 0.5 |" in card and "toy-teacher" in card
    assert "| used | 120 |" in card
    record = json.loads((copy / "llmdistill.json").read_text())
    assert record["metrics"] == {"test": {"accuracy": 0.625, "neutral_recall": 0.5}}
    assert record["teacher"] == {"spec": "toy-teacher"}


def test_result_fields_listed_for_the_card_match_train_result() -> None:
    assert tuple(f.name for f in dataclasses.fields(TrainResult)) == RESULT_FIELDS


def test_gold_labels_do_not_change_training(trained, tiny_bert_dir, toy_split_m, tmp_path) -> None:
    result, _ = trained
    train, validation = (f.assign(gold="neutral") for f in toy_split_m)
    again = train_student(train, validation, LABELS, tiny_cfg(tiny_bert_dir), tmp_path / "s")
    assert again.validation_agreement == result.validation_agreement
    assert again.best_epoch == result.best_epoch
    texts = validation["text"].tolist()
    a = StudentClassifier.load(result.model_dir).predict_proba(texts)
    b = StudentClassifier.load(again.model_dir).predict_proba(texts)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_non_ok_rows_are_skipped_and_counted(tiny_bert_dir, toy_annotations, tmp_path, caplog):
    train = toy_annotations(30, seed=3)
    failed = train.head(4).assign(status=["error", "refused", "unparseable", None], label=None)
    for lab in LABELS:
        failed[f"prob_{lab}"] = np.nan
    train = pd.concat([train, failed], ignore_index=True)
    validation = pd.concat([toy_annotations(9, seed=4), failed], ignore_index=True)
    with caplog.at_level(logging.WARNING, logger="llmdistill.student.train"):
        result = train_student(train, validation, LABELS, tiny_cfg(tiny_bert_dir, epochs=1),
                               tmp_path / "s")
    assert (result.used, result.skipped) == (30, 4)
    assert "skipped 4 rows" in caplog.text


def test_existing_output_is_refused(tiny_bert_dir, toy_split, tmp_path) -> None:
    out = tmp_path / "student"
    out.mkdir()
    with pytest.raises(UsageError, match="exists: pass a new --out or delete it"):
        train_student(*toy_split, LABELS, tiny_cfg(tiny_bert_dir), out)


def test_missing_probability_columns_are_a_data_error(tiny_bert_dir, toy_split, tmp_path):
    train, validation = toy_split
    with pytest.raises(DataError, match="prob_neutral"):
        train_student(train.drop(columns="prob_neutral"), validation, LABELS,
                      tiny_cfg(tiny_bert_dir), tmp_path / "s")


def test_ok_rows_without_probabilities_are_a_data_error(tiny_bert_dir, toy_split, tmp_path):
    train, validation = toy_split
    train.loc[5, "prob_positive"] = np.nan
    with pytest.raises(DataError, match="id t5"):
        train_student(train, validation, LABELS, tiny_cfg(tiny_bert_dir), tmp_path / "s")


def test_a_split_without_ok_rows_is_a_data_error(tiny_bert_dir, toy_split, tmp_path) -> None:
    train, validation = toy_split
    with pytest.raises(DataError, match="validation split has no rows annotated ok"):
        train_student(train, validation.assign(status="error"), LABELS,
                      tiny_cfg(tiny_bert_dir), tmp_path / "s")


def test_unknown_student_model_is_a_usage_error(toy_split, tmp_path) -> None:
    with pytest.raises(UsageError, match="cannot load student model"):
        train_student(*toy_split, LABELS, StudentConfig(model=str(tmp_path / "nope")),
                      tmp_path / "s")


def test_roberta_student_trains(tiny_roberta_dir, toy_split, tmp_path) -> None:
    out = tmp_path / "roberta"
    result = train_student(*toy_split, LABELS, tiny_cfg(tiny_roberta_dir, epochs=4), out)
    assert result.validation_agreement >= 0.6  # chance is 1/3
    clf = StudentClassifier.load(out)
    assert clf.labels == LABELS
    assert clf.max_length == 32
    probs = clf.predict_proba(["love it", "a " * 200])  # the long one is truncated, not an error
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


# ---- inference --------------------------------------------------------------------------------

def test_predict_proba_preserves_input_order(trained) -> None:
    _, out = trained
    clf = StudentClassifier.load(out, threads=None)
    texts = ["awful", "so great and happy and wonderful today", "the meeting", "",
             "love it best amazing", "terrible broken worst sad thing really"]
    batched = clf.predict_proba(texts, batch_size=2, progress=True)
    one_by_one = np.vstack([clf.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert batched.shape == (6, 3)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-6)
    assert clf.predict(texts, batch_size=4) == [LABELS[i] for i in batched.argmax(axis=1)]


def test_predict_on_no_texts_is_empty(trained) -> None:
    clf = StudentClassifier.load(trained[1])
    assert clf.predict_proba([]).shape == (0, 3)
    assert clf.predict([]) == []
    assert clf.parameters == trained[0].parameters


# ---- LoRA, decoder students, feature distillation -----------------------------------------------

def _saved_keys(model_dir: Path) -> set[str]:
    from safetensors import safe_open

    keys: set[str] = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            keys |= set(st.keys())
    return keys


def test_lora_student_trains_only_adapters_and_saves_a_plain_merged_folder(
        tiny_bert_dir, toy_split, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    from llmdistill.config import LoraConfig
    from llmdistill.student.train import load_student

    model, _ = load_student(str(tiny_bert_dir), LABELS, LoraConfig(r=4, alpha=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    train, val = toy_split
    out = tmp_path / "lora"
    train_student(train, val, LABELS, tiny_cfg(tiny_bert_dir, lora={"r": 4, "alpha": 8},
                                               anchor_size=0), out)
    assert not any("lora" in k for k in _saved_keys(out))
    plain = AutoModelForSequenceClassification.from_pretrained(str(out))  # no peft needed
    assert plain.config.num_labels == 3
    clf = StudentClassifier.load(out)
    probs = clf.predict_proba(val["text"].tolist())
    assert np.allclose(probs.sum(1), 1.0)


def test_lora_target_modules_the_model_lacks_are_a_one_line_error_naming_its_layers(
        tiny_bert_dir) -> None:
    from llmdistill.config import LoraConfig
    from llmdistill.student.train import load_student

    with pytest.raises(UsageError) as e:
        load_student(str(tiny_bert_dir), LABELS, LoraConfig(target_modules=["q_proj"]))
    assert "\n" not in str(e.value) and "query" in str(e.value)


def test_decoder_lm_becomes_a_classifier_that_pads_with_its_end_token(tmp_path) -> None:
    from tiny_lm import make_tiny_lm
    from transformers import AutoTokenizer

    from llmdistill.student.train import load_student

    path = make_tiny_lm(tmp_path / "lm")
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.pad_token = None
    tok.eos_token = "<|im_end|>"
    tok.save_pretrained(str(path))
    model, tokenizer = load_student(str(path), LABELS)
    assert tokenizer.pad_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    enc = tokenizer(["i love it", "this movie was very bad !"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 3)


@pytest.mark.integration
def test_a_gguf_decoder_student_carries_no_quantizer_so_trainer_accepts_it() -> None:
    """transformers dequantizes a GGUF file to fp32 but keeps a GGUF quantizer on the model,
    which Trainer refuses to train; the packaged SmolLM2 must load without that marker."""
    from transformers.trainer_utils import validate_quantization_for_training

    from llmdistill.assets import smollm2_gguf
    from llmdistill.student.train import load_student

    model, _ = load_student(str(smollm2_gguf()), LABELS)
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert getattr(model.config, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    validate_quantization_for_training(model)  # what Trainer checks first; raises when refused


def _with_features(frame: pd.DataFrame, width: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["teacher_features"] = [rng.normal(size=width).astype(np.float32) for _ in range(len(out))]
    return out


def test_feature_loss_trains_a_projection_that_is_not_saved(tiny_bert_dir, toy_split,
                                                            tmp_path) -> None:
    train, val = toy_split
    out = tmp_path / "feat"
    cfg = tiny_cfg(tiny_bert_dir, feature_loss={"weight": 0.5}, anchor_size=0, epochs=2)
    frame = _with_features(train, 12, 0)
    train_student(frame, val, LABELS, cfg, out)
    assert not any("feature_projection" in k for k in _saved_keys(out))
    train_student(frame, val, LABELS, tiny_cfg(tiny_bert_dir, anchor_size=0, epochs=2),
                  tmp_path / "plain")
    texts = val["text"].tolist()
    with_loss = StudentClassifier.load(out).predict_proba(texts)
    without = StudentClassifier.load(tmp_path / "plain").predict_proba(texts)
    assert not np.allclose(with_loss, without, atol=1e-4)  # the auxiliary loss moved the weights


def test_feature_loss_without_hidden_states_or_with_mixed_widths_is_a_data_error(
        tiny_bert_dir, toy_split, tmp_path) -> None:
    train, val = toy_split
    cfg = tiny_cfg(tiny_bert_dir, feature_loss={"weight": 0.5}, anchor_size=0)
    with pytest.raises(DataError, match="no teacher_features column"):
        train_student(train, val, LABELS, cfg, tmp_path / "a")
    mixed = _with_features(train, 12, 0)
    mixed.at[3, "teacher_features"] = np.zeros(7, dtype=np.float32)
    with pytest.raises(DataError, match="wrong size"):
        train_student(mixed, val, LABELS, cfg, tmp_path / "b")


# ---- multi-label --------------------------------------------------------------------------------

ML_LABELS = ["food", "music", "sports"]
ML_WORDS = {"food": ["pizza", "pasta", "bread", "cheese", "soup", "salad"],
            "music": ["guitar", "song", "piano", "concert", "album", "drums"],
            "sports": ["football", "tennis", "goal", "match", "team", "race"]}
ML_SUBSETS = [[], ["food"], ["music"], ["sports"], ["food", "music"], ["food", "sports"],
              ["music", "sports"], ["food", "music", "sports"]]


def multilabel_annotations(n: int, seed: int = 0) -> pd.DataFrame:
    """A multi-label store: each label has its own words; every subset (the empty one too)
    occurs; the teacher's per-label probabilities are independent (0.65–0.95 for the labels that
    apply, 0.02–0.3 for the others), `label` and `gold` the canonical set at 0.5."""
    import random

    from conftest import FILLER

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        chosen = ML_SUBSETS[i % len(ML_SUBSETS)]
        words = rng.sample(FILLER, 3) + [w for lab in chosen for w in rng.sample(ML_WORDS[lab], 2)]
        rng.shuffle(words)
        probs = {f"prob_{lab}": rng.uniform(0.65, 0.95) if lab in chosen else rng.uniform(0.02, 0.3)
                 for lab in ML_LABELS}
        label = "|".join(chosen)
        rows.append({"id": f"m{i}", "text": " ".join(words), "status": "ok", "label": label,
                     "gold": label, **probs})
    return pd.DataFrame(rows)


def _is_canonical(answer: str, labels: list[str]) -> bool:
    parts = answer.split("|") if answer else []
    return parts == [lab for lab in labels if lab in parts]


def _ml_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g)


def test_multilabel_loss_has_zero_gradient_where_each_sigmoid_is_the_teachers_probability():
    from llmdistill.student.losses import multilabel_distillation_loss

    _, teacher = _ml_batch()
    logits = torch.logit(teacher).clone().requires_grad_(True)
    multilabel_distillation_loss(logits, teacher, alpha=1.0).backward()
    assert logits.grad.abs().max().item() < 1e-6


def test_multilabel_loss_at_alpha_zero_is_bce_against_the_hard_labels_and_mixes_by_alpha():
    from llmdistill.student.losses import multilabel_distillation_loss

    logits, teacher = _ml_batch()
    hard = (teacher >= 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, hard)
    assert multilabel_distillation_loss(logits, teacher, 0.0).item() == pytest.approx(
        expected.item(), rel=1e-5)
    soft = F.binary_cross_entropy_with_logits(logits, teacher)
    mixed = multilabel_distillation_loss(logits, teacher, 0.3)
    assert mixed.item() == pytest.approx(0.3 * soft.item() + 0.7 * expected.item(), rel=1e-5)
    gold = 1.0 - hard  # given hard labels (an anchor's gold) replace p ≥ 0.5
    assert multilabel_distillation_loss(logits, teacher, 0.0, hard=gold).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, gold).item(), rel=1e-5)
    w = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    per = F.binary_cross_entropy_with_logits(logits, teacher, reduction="none").mean(1)
    assert multilabel_distillation_loss(logits, teacher, 1.0, weights=w).item() == pytest.approx(
        (per * w).mean().item(), rel=1e-5)


def test_multilabel_loss_stays_finite_at_exact_zeros_and_ones() -> None:
    from llmdistill.student.losses import multilabel_distillation_loss

    logits = torch.tensor([[30.0, -30.0], [0.0, 0.0]], requires_grad=True)
    loss = multilabel_distillation_loss(logits, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.fixture(scope="module")
def ml_trained(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny BERT multi-label student (anchor on gold), shared by the tests that inspect it."""
    train, validation = multilabel_annotations(160, seed=1), multilabel_annotations(40, seed=2)
    out = tmp_path_factory.mktemp("ml-run") / "student"
    result = train_student(train, validation, ML_LABELS, tiny_cfg(tiny_bert_dir), out,
                           {"task": "multi_label", "data": {"source": "toy"}}, anchor=train)
    return result, out


def test_a_multilabel_student_gives_independent_per_label_probabilities_and_label_sets(
        ml_trained) -> None:
    from llmdistill.tasks import get_task

    result, out = ml_trained
    assert 0.7 <= result.validation_agreement <= 1.0  # micro-F1 with the teacher's sets
    clf = StudentClassifier.load(out)
    assert clf.task == "multi_label" and clf.labels == ML_LABELS
    texts = multilabel_annotations(24, seed=3)["text"].tolist() + ["", "pizza " * 80]
    probs = clf.predict_proba(texts, batch_size=5)
    assert probs.shape == (26, 3) and ((probs >= 0) & (probs <= 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent sigmoids, not a softmax
    answers = clf.predict(texts, batch_size=7)
    assert all(_is_canonical(a, ML_LABELS) for a in answers)
    assert answers == get_task("multi_label").decide(probs, ML_LABELS, clf.thresholds)
    assert clf.decide(probs) == answers


def test_a_multilabel_record_has_the_task_and_one_threshold_per_label(ml_trained) -> None:
    from llmdistill.student.record import StudentRecord

    _, out = ml_trained
    record = StudentRecord.load(out)
    assert record.task == "multi_label" and len(record.thresholds) == 3
    assert all(0.0 <= t <= 1.0 for t in record.thresholds)
    np.testing.assert_array_equal(StudentClassifier.load(out).thresholds, record.thresholds)
    assert record.noise["prior_correction"] is False and record.noise["anchor_size"] > 0
    assert json.loads((out / "config.json").read_text())["problem_type"] == \
        "multi_label_classification"
    card = (out / "README.md").read_text()
    assert "Multi-label" in card and "| label | threshold |" in card and "BCE" in card


def test_a_reloaded_multilabel_student_gives_identical_probabilities(ml_trained) -> None:
    _, out = ml_trained
    texts = multilabel_annotations(16, seed=4)["text"].tolist()
    a = StudentClassifier.load(out).predict_proba(texts)
    b = StudentClassifier.load(out, backend="torch").predict_proba(texts)
    np.testing.assert_array_equal(a, b)


def test_a_multilabel_folder_gives_sigmoid_scores_in_a_plain_transformers_pipeline(
        ml_trained) -> None:
    from transformers import pipeline

    _, out = ml_trained
    texts = ["pizza and a guitar song", "the football match today", "it was so"]
    rows = pipeline("text-classification", model=str(out), top_k=None)(texts, truncation=True)
    ours = StudentClassifier.load(out).predict_proba(texts)
    for row, p in zip(rows, ours, strict=True):
        theirs = {d["label"]: d["score"] for d in row}
        assert [theirs[lab] for lab in ML_LABELS] == pytest.approx(list(p), abs=1e-5)


def test_fixed_thresholds_are_the_configured_threshold_for_every_label(tiny_bert_dir,
                                                                        tmp_path) -> None:
    from llmdistill.student.record import StudentRecord

    train, val = multilabel_annotations(40, seed=5), multilabel_annotations(16, seed=6)
    cfg = tiny_cfg(tiny_bert_dir, epochs=1, thresholds="fixed", threshold=0.3)
    train_student(train, val, ML_LABELS, cfg, tmp_path / "s", {"task": "multi_label"})
    assert StudentRecord.load(tmp_path / "s").thresholds == [0.3, 0.3, 0.3]


def test_softmax_only_options_are_skipped_for_multilabel_with_one_line_each(
        tiny_bert_dir, tmp_path, caplog) -> None:
    train, val = multilabel_annotations(40, seed=5), multilabel_annotations(16, seed=6)
    cfg = tiny_cfg(tiny_bert_dir, epochs=1, forward_correction=True, label_smoothing=0.1,
                   class_weights="anchor", anchor_size=20)
    with caplog.at_level(logging.INFO, logger="llmdistill.student.train"):
        result = train_student(train, val, ML_LABELS, cfg, tmp_path / "s",
                               {"task": "multi_label"}, anchor=train)
    for name in ("prior_correction", "forward_correction", "class_weights", "label_smoothing"):
        assert caplog.text.count(f"multi_label: {name}=") == 1
        assert result.noise[name] in (False, "none", 0.0)
    assert "no anchor set" not in caplog.text


# ---- long texts as windows ----------------------------------------------------------------------

def test_short_texts_stay_whole_and_long_ones_become_overlapping_windows(tiny_bert_dir) -> None:
    from transformers import AutoTokenizer

    from llmdistill.student.windows import Windowing, split_windows

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    w = Windowing(max_length=16, stride=8, max_windows=4, pool="mean")
    long_text = ("the a today this my it was is really so and we great love awful hate "
                 "meeting table station report")  # 20 words of one token each
    longest = " ".join(["great"] * 200)
    windows, owner = split_windows(["love it", long_text, longest], tok, w)
    assert windows[0] == "love it" and owner.tolist()[0] == 0
    own = [win for win, o in zip(windows, owner, strict=True) if o == 1]
    assert 1 < len(own) <= 4 and own[0].startswith("the a") and own[-1].endswith("report")
    assert (owner == 2).sum() == 4  # capped at max_windows
    for win in windows:
        assert win in (long_text, longest, "love it") or win in long_text or win in longest
        assert len(tok(win, truncation=True, max_length=16)["input_ids"]) <= 16
    ids = tok(long_text, add_special_tokens=False)["input_ids"]
    firsts = [tok(win, add_special_tokens=False)["input_ids"][0] for win in own]
    assert firsts == [ids[i] for i in range(0, 8 * len(own), 8)]  # starts 8 tokens apart


def test_window_logits_pool_by_mean_or_max_per_text() -> None:
    from llmdistill.student.windows import pool_logits

    logits = np.array([[1.0, 0.0], [3.0, -2.0], [0.5, 0.5]])
    owner = np.array([0, 0, 1])
    np.testing.assert_allclose(pool_logits(logits, owner, 2, "mean"), [[2.0, -1.0], [0.5, 0.5]])
    np.testing.assert_allclose(pool_logits(logits, owner, 2, "max"), [[3.0, 0.0], [0.5, 0.5]])


def test_a_windowed_student_trains_on_windows_and_pools_them_to_predict_long_texts(
        tiny_bert_dir, toy_annotations, tmp_path) -> None:
    from llmdistill.student.record import StudentRecord
    from llmdistill.student.windows import split_windows

    train, val = toy_annotations(60, seed=1), toy_annotations(20, seed=2)
    for frame in (train, val):
        frame.loc[::3, "text"] = frame.loc[::3, "text"].map(lambda t: " ".join([t] * 5))
    cfg = tiny_cfg(tiny_bert_dir, epochs=2, max_length=16, long_text="windows",
                   window_stride=8, max_windows=4)
    result = train_student(train, val, LABELS, cfg, tmp_path / "s", anchor=train)
    assert len(result.noise["prior_shift"]) == 3  # from the validation texts' pooled logits
    assert result.used == 60  # texts, not windows
    assert StudentRecord.load(tmp_path / "s").student_config["long_text"] == "windows"
    assert "overlapping windows" in (tmp_path / "s" / "README.md").read_text()
    clf = StudentClassifier.load(tmp_path / "s")
    assert clf.windowing is not None and clf.windowing.max_length == 16
    texts = ["love it", " ".join(["awful terrible day and the meeting"] * 10)]
    probs = clf.predict_proba(texts)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    windows, owner = split_windows(texts, clf.tokenizer, clf.windowing)
    assert (owner == 1).sum() > 1
    pooled = clf._logits(windows, 8, False)[owner == 1].mean(axis=0)
    expected = np.exp(pooled - pooled.max()) / np.exp(pooled - pooled.max()).sum()
    np.testing.assert_allclose(probs[1], expected, atol=1e-9)
