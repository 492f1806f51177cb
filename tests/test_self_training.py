"""Self-training: pseudo-labels from the student, the pool, the balance guard, the rounds."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llmdistill.config import DataConfig, SelfTrainingConfig, StudentConfig
from llmdistill.data import text_hash
from llmdistill.errors import DataError, UsageError
from llmdistill.self_training import (
    balance,
    clean_pool,
    load_pool,
    pseudo_label,
    self_train,
    teacher_shares,
)
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.record import StudentRecord

LABELS = ["negative", "neutral", "positive"]
PROBS = [f"prob_{lab}" for lab in LABELS]


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """Training and loading set torch's process-wide thread count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pool(toy_annotations) -> pd.DataFrame:
    """40 unlabelled toy texts (gold dropped), ids p0..p39."""
    frame = toy_annotations(40, seed=5)
    return pd.DataFrame({"id": [f"p{i}" for i in range(40)], "text": frame["text"]})


def st_cfg(**overrides) -> SelfTrainingConfig:
    return SelfTrainingConfig(**{"rounds": 1, "threshold": 0.0, **overrides})


def test_threshold_zero_keeps_every_pool_text_as_a_soft_annotation(tiny_student_dir,
                                                                   pool) -> None:
    rows = pseudo_label(tiny_student_dir, pool, LABELS, st_cfg(weight=0.4))
    texts = clean_pool(pool)["text"].tolist()
    assert len(rows) == len(texts)
    assert rows["text"].tolist() == texts
    assert (rows["split"] == "train").all() and (rows["status"] == "ok").all()
    assert (rows["source"] == "pseudo").all() and (rows["weight"] == 0.4).all()
    assert rows["id"].str.startswith("pseudo:").all() and rows["id"].is_unique
    assert rows["text_hash"].tolist() == [text_hash(t) for t in texts]
    probs = rows[PROBS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    student = StudentClassifier.load(tiny_student_dir, backend="torch")
    np.testing.assert_allclose(probs, student.predict_proba(texts), atol=1e-6)
    assert rows["label"].tolist() == [LABELS[i] for i in probs.argmax(axis=1)]


def test_a_higher_threshold_keeps_a_subset(tiny_student_dir, pool) -> None:
    low = pseudo_label(tiny_student_dir, pool, LABELS, st_cfg(threshold=0.0))
    high = pseudo_label(tiny_student_dir, pool, LABELS, st_cfg(threshold=0.6))
    assert set(high["id"]) <= set(low["id"])
    assert (high[PROBS].max(axis=1) >= 0.6).all()


def test_an_impossible_threshold_keeps_nothing_with_a_warning(tiny_student_dir, pool,
                                                               caplog) -> None:
    cfg = st_cfg().model_copy(update={"threshold": 1.01})
    with caplog.at_level(logging.WARNING):
        rows = pseudo_label(tiny_student_dir, pool, LABELS, cfg)
    assert rows.empty and {"id", "label", *PROBS, "weight"} <= set(rows.columns)
    assert "threshold" in caplog.text


def test_texts_already_labelled_are_never_pseudo_labelled(tiny_student_dir, pool,
                                                          toy_annotations) -> None:
    labelled = toy_annotations(20, seed=1)
    mixed = pd.concat([pool, labelled[["id", "text"]]], ignore_index=True)
    rows = pseudo_label(tiny_student_dir, mixed, LABELS, st_cfg(), labelled=labelled)
    assert not set(rows["text_hash"]) & set(labelled["text"].map(text_hash))
    assert set(rows["text_hash"]) == set(clean_pool(pool, labelled)["text_hash"])


def test_ensemble_averages_student_and_teacher_where_the_teacher_answered(
        tiny_student_dir, pool) -> None:
    texts = clean_pool(pool)["text"].tolist()
    teacher = pd.DataFrame({"text": texts[:10], "status": ["ok"] * 9 + ["refused"]})
    teacher[PROBS] = np.tile([2.0, 0.0, 0.0], (10, 1))  # unnormalised: renormalised to one-hot
    rows = pseudo_label(tiny_student_dir, pool, LABELS, st_cfg(source="ensemble"),
                        teacher_rows=teacher)
    student = StudentClassifier.load(tiny_student_dir, backend="torch").predict_proba(texts)
    expected = student.copy()
    expected[:9] = (student[:9] + np.array([1.0, 0.0, 0.0])) / 2
    np.testing.assert_allclose(rows[PROBS].to_numpy(), expected, atol=1e-6)
    plain = pseudo_label(tiny_student_dir, pool, LABELS, st_cfg(source="student"),
                         teacher_rows=teacher)
    np.testing.assert_allclose(plain[PROBS].to_numpy(), student, atol=1e-6)


def test_balance_caps_each_label_at_its_share_keeping_the_most_confident() -> None:
    ids = np.array([0] * 8 + [1] * 2)
    conf = np.array([0.91, 0.99, 0.92, 0.98, 0.93, 0.97, 0.94, 0.96, 0.95, 0.9])
    keep = balance(ids, conf, np.array([0.5, 0.5, 0.0]), 3)
    assert keep.tolist() == [1, 3, 5, 6, 7, 8, 9]  # label 0: its 5 most confident; label 1: both
    assert balance(ids, conf, np.array([1.0, 0.0, 0.0]), 3).tolist() == list(range(8))
    assert balance(np.zeros(0, int), np.zeros(0), np.array([0.3, 0.3, 0.4]), 3).size == 0
    with pytest.raises(UsageError, match="class_share"):
        balance(ids, conf, np.array([0.5, 0.5]), 3)


def test_teacher_shares_count_ok_labels_only(toy_annotations) -> None:
    frame = toy_annotations(9, seed=0)
    frame.loc[0, "status"] = "error"
    np.testing.assert_allclose(teacher_shares(frame, LABELS), [2 / 8, 3 / 8, 3 / 8])


def test_load_pool_reads_a_file_caps_it_reproducibly_and_drops_gold(tmp_path, pool,
                                                                    toy_annotations) -> None:
    path = tmp_path / "pool.csv"
    toy_annotations(40, seed=5)[["text", "label"]].to_csv(path, index=False)
    labelled = toy_annotations(40, seed=5).head(5)
    got = load_pool(SelfTrainingConfig(pool=str(path), max_pool=20), DataConfig(),
                    labelled=labelled)
    assert len(got) == 20 and list(got.columns) == ["id", "text", "text_hash"]
    assert not set(got["text_hash"]) & set(labelled["text"].map(text_hash))
    shuffled = tmp_path / "shuffled.csv"
    pd.read_csv(path).iloc[::-1].to_csv(shuffled, index=False)
    again = load_pool(SelfTrainingConfig(pool=str(shuffled), max_pool=20), DataConfig(),
                      labelled=labelled)
    assert set(again["text_hash"]) == set(got["text_hash"])
    default = load_pool(SelfTrainingConfig(max_pool=None), DataConfig(), default=pool)
    assert len(default) == len(clean_pool(pool))


def test_load_pool_errors_are_one_line(tmp_path, pool) -> None:
    no_text = tmp_path / "no_text.csv"
    pd.DataFrame({"body": ["a text"]}).to_csv(no_text, index=False)
    with pytest.raises(DataError, match="no text column"):
        load_pool(SelfTrainingConfig(pool=str(no_text)), DataConfig())
    with pytest.raises(UsageError, match="self_training.pool"):
        load_pool(SelfTrainingConfig(), DataConfig())
    with pytest.raises(DataError, match="no text column"):
        clean_pool(pool.rename(columns={"text": "body"}))
    with pytest.raises(DataError, match="no texts"):
        clean_pool(pool.iloc[:0])
    with pytest.raises(DataError, match="no texts"):
        clean_pool(pool.assign(text="  "))
    with pytest.raises(DataError, match="no texts"):
        clean_pool(pool, labelled=pool)


def small_student_cfg(encoder: Path) -> StudentConfig:
    return StudentConfig(model=str(encoder), epochs=1, batch_size=16, learning_rate=3e-3,
                         max_length=32, threads=1, anchor_size=0, class_weights="none")


def teacher_frame(toy_annotations) -> pd.DataFrame:
    return pd.concat([toy_annotations(60, seed=1).assign(split="train"),
                      toy_annotations(15, seed=2).assign(split="validation")],
                     ignore_index=True)


def test_one_round_trains_a_new_student_on_teacher_and_pseudo_labels(
        tiny_student_dir, tiny_bert_dir, pool, toy_annotations, tmp_path) -> None:
    student_dir = tmp_path / "student"
    shutil.copytree(tiny_student_dir, student_dir)
    before = (student_dir / "model.safetensors").read_bytes()
    result = self_train(teacher_frame(toy_annotations), pool, LABELS,
                        small_student_cfg(tiny_bert_dir), st_cfg(), student_dir,
                        manifest={"data": {"source": "toy"}})
    (record,) = result.history
    assert not record["skipped"] and result.rounds_trained == 1
    assert 0 < record["kept"] <= record["passed"] == record["pool"]
    assert sum(record["kept_per_label"].values()) == record["kept"]
    assert record["used"] == 60 + record["kept"]
    assert 0.0 <= record["validation_agreement"] <= 1.0
    assert record["agreement_with_previous_round"] is None
    json.dumps(result.to_dict())
    assert (student_dir / "model.safetensors").read_bytes() != before
    assert StudentClassifier.load(student_dir).labels == LABELS
    saved = StudentRecord.load(student_dir).model_dump()
    assert saved["self_training"]["round"] == 1 and saved["data"] == {"source": "toy"}
    assert not list(tmp_path.glob(".student.*"))  # no temp folder left behind


def test_a_round_nothing_passes_is_skipped_and_the_student_kept(
        tiny_student_dir, tiny_bert_dir, pool, toy_annotations, tmp_path, caplog) -> None:
    student_dir = tmp_path / "student"
    shutil.copytree(tiny_student_dir, student_dir)
    before = (student_dir / "model.safetensors").read_bytes()
    cfg = st_cfg(rounds=3).model_copy(update={"threshold": 1.01})
    with caplog.at_level(logging.WARNING):
        result = self_train(teacher_frame(toy_annotations), pool, LABELS,
                            small_student_cfg(tiny_bert_dir), cfg, student_dir)
    assert [r["skipped"] for r in result.history] == [True]
    assert result.rounds_trained == 0 and result.history[0]["kept"] == 0
    assert (student_dir / "model.safetensors").read_bytes() == before
    assert "skipped" in caplog.text


def test_self_train_needs_validation_rows(tiny_student_dir, tiny_bert_dir, pool,
                                          toy_annotations) -> None:
    with pytest.raises(DataError, match="validation"):
        self_train(toy_annotations(20, seed=1), pool, LABELS, small_student_cfg(tiny_bert_dir),
                   st_cfg(), tiny_student_dir)
