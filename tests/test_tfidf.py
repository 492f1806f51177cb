"""The tfidf student (student/tfidf.py) and the soft-label head it shares with model2vec
(student/heads.py): the head's definition, C chosen on validation, the folder's round trip,
evaluation and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression

from llmdistill import pipeline
from llmdistill.config import EvaluateConfig, ServeConfig, StudentConfig
from llmdistill.errors import UsageError
from llmdistill.serve import create_app
from llmdistill.student import tfidf
from llmdistill.student.heads import HEAD_FILE, LinearHead, fit_head, fit_soft_logistic
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.record import StudentRecord
from llmdistill.student.targets import TeacherTargets
from llmdistill.student.train import train_student

LABELS = ["negative", "neutral", "positive"]


def blobs(n: int, seed: int, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense features of three Gaussian classes (means apart, unit noise) and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3 if y is None else y
    return rng.normal(size=(len(y), 4)) + 2.0 * np.eye(3, 4)[y], y


def targets(probs: np.ndarray) -> TeacherTargets:
    return TeacherTargets(texts=[""] * len(probs), probs=probs, label_ids=probs.argmax(1),
                          skipped=0)


@pytest.fixture(scope="module")
def tfidf_student(toy_annotations, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tfidf student trained on the toy task, without an anchor (read-only)."""
    out = tmp_path_factory.mktemp("tfidf") / "student"
    train_student(toy_annotations(120, seed=1), toy_annotations(30, seed=2), LABELS,
                  StudentConfig(model="tfidf"), out, {"data": {"source": "toy"}})
    return out


def test_one_hot_soft_labels_fit_the_same_head_as_plain_logistic_regression() -> None:
    x, y = blobs(90, seed=0)
    head, _ = fit_soft_logistic(x, np.eye(3)[y], None, c=1.0)
    plain = LogisticRegression(C=1.0, max_iter=1000, tol=1e-8).fit(x, y)
    np.testing.assert_allclose(head.predict_proba(x), plain.predict_proba(x), atol=1e-3)


def test_soft_labels_are_the_weighted_duplication_of_every_row_per_class() -> None:
    x, y = blobs(60, seed=1)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=len(x))
    weights = rng.uniform(0.5, 2.0, size=len(x))
    head, _ = fit_soft_logistic(x, probs, weights, c=0.5)
    dup = LogisticRegression(C=0.5, max_iter=1000, tol=1e-8).fit(
        np.vstack([x] * 3), np.repeat(np.arange(3), len(x)),
        sample_weight=np.concatenate([weights * probs[:, c] for c in range(3)]))
    np.testing.assert_allclose(head.predict_proba(x), dup.predict_proba(x), atol=1e-3)


def test_a_weakly_regularised_soft_head_reproduces_each_groups_soft_label() -> None:
    groups = np.repeat(np.arange(4), 25)
    x = np.eye(4)[groups]
    wanted = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.0, 0.5]])
    head, _ = fit_soft_logistic(x, wanted[groups], None, c=1e4)
    np.testing.assert_allclose(head.predict_proba(np.eye(4)), wanted, atol=0.02)


def test_a_binary_head_has_one_row_per_label() -> None:
    x, y = blobs(60, seed=2)
    probs = np.eye(2)[(y > 0).astype(int)]
    head, _ = fit_soft_logistic(x, probs, None, c=1.0)
    assert head.coef.shape == (2, 4)
    assert np.mean(head.predict_proba(x).argmax(1) == probs.argmax(1)) > 0.8


def test_c_is_chosen_by_agreement_with_the_teacher_on_validation_only() -> None:
    # Training: class 0 is the majority, so a C near 0 predicts class 0 for every text.
    x, y = blobs(0, seed=3, y=np.repeat([0, 1, 2], [80, 40, 40]))
    tr = targets(np.eye(3)[y])
    xv, yv = blobs(60, seed=4)
    xv, yv = xv[yv > 0], yv[yv > 0]  # validation texts of classes 1 and 2
    cfg = StudentConfig(model="tfidf", head_c=[100.0, 1e-6], class_weights="none",
                        prior_correction=False)
    truthful = fit_head(x, tr, xv, targets(np.eye(3)[yv]), cfg, None)
    says_zero = fit_head(x, tr, xv, targets(np.eye(3)[np.zeros_like(yv)]), cfg, None)
    assert truthful.c == 100.0 and truthful.c_index == 0
    assert says_zero.c == 1e-6 and says_zero.c_index == 1
    for fit, labels in ((truthful, yv), (says_zero, np.zeros_like(yv))):
        assert fit.validation_agreement == max(fit.agreements)
        assert fit.validation_agreement == np.mean(fit.head.logits(xv).argmax(1) == labels)


def test_the_vectorizers_and_head_predict_the_same_after_save_and_load(
        toy_annotations, tmp_path: Path) -> None:
    texts = toy_annotations(60, seed=5)["text"].tolist() + ["Brand-new wörds, 123 !!"]
    features = tfidf.TfidfFeatures.fit(tfidf.vectorizer_specs(StudentConfig(model="tfidf")),
                                       texts[:40])
    rng = np.random.default_rng(0)
    head = LinearHead(coef=rng.normal(size=(3, sum(features.dims))).astype(np.float32),
                      intercept=rng.normal(size=3))
    features.save(tmp_path)
    head.save(tmp_path)
    loaded = tfidf.TfidfFeatures.load(tmp_path)
    before, after = features.transform(texts), loaded.transform(texts)
    assert before.shape == after.shape and (before != after).nnz == 0
    again = LinearHead.load(tmp_path, LABELS, dim=sum(features.dims))
    np.testing.assert_array_equal(head.predict_proba(before), again.predict_proba(after))


def test_a_tfidf_student_records_its_kind_and_beats_chance_after_loading(
        tfidf_student: Path, toy_annotations) -> None:
    record = StudentRecord.load(tfidf_student)
    assert record.kind == "tfidf" and record.labels == LABELS
    assert record.parameters > 0 and record.used == 120 and record.best_epoch >= 1
    clf = StudentClassifier.load(tfidf_student)
    assert clf.labels == LABELS and clf.backend == "numpy-tfidf" and clf.onnx_path is None
    assert clf.parameters == record.parameters
    held_out = toy_annotations(90, seed=7)
    probs = clf.predict_proba(held_out["text"].tolist(), batch_size=16)
    assert probs.shape == (90, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert clf.predict(held_out["text"].tolist()) == [LABELS[i] for i in probs.argmax(1)]
    assert np.mean(probs.argmax(1) == held_out["label"].map(LABELS.index)) > 0.8
    # the agreement recorded at training is the loaded model's: the folder is the trained model
    val = toy_annotations(30, seed=2)
    agree = np.mean(np.array(clf.predict(val["text"].tolist())) == val["label"].to_numpy())
    assert agree == pytest.approx(record.validation_agreement)
    single = clf.predict_proba([held_out["text"].iloc[4]])
    np.testing.assert_allclose(single[0], probs[4], atol=1e-12)  # batching changes nothing


def test_an_anchor_applies_the_prior_correction_to_the_intercept(
        toy_annotations, tmp_path: Path) -> None:
    train = toy_annotations(120, seed=1)
    result = train_student(train, toy_annotations(30, seed=2), LABELS,
                           StudentConfig(model="tfidf", anchor_size=30), tmp_path / "s",
                           anchor=train)
    assert result.noise["anchor_size"] == 30
    assert result.noise["shift_folded_into"] == "head.intercept"
    assert len(result.noise["prior_shift"]) == 3


def test_evaluate_and_serve_work_on_a_tfidf_folder(tfidf_student: Path, toy_annotations,
                                                   tmp_path: Path) -> None:
    gold = toy_annotations(40, seed=8)[["id", "text", "label"]]
    metrics = pipeline.evaluate(tfidf_student, gold, LABELS,
                                EvaluateConfig(bootstrap=20, speed_texts=16, latency_samples=3),
                                out_dir=tmp_path / "report")
    assert metrics["info"]["student"]["speed"]["backend"] == "numpy-tfidf"
    assert metrics["info"]["student"]["size"]["files"] == 3  # head, idf weights, vocabularies
    assert metrics["student"] is not None
    clf = StudentClassifier.load(tfidf_student)
    with TestClient(create_app(clf, ServeConfig(), model_name="tfidf")) as client:
        reply = client.post("/v1/classify", json={"texts": ["i love this great day", "awful"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["backend"] == "numpy-tfidf" and len(body["results"]) == 2
    assert body["results"][0]["label"] in LABELS
    assert sum(body["results"][0]["probs"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("damage", [tfidf.SPEC_FILE, tfidf.IDF_FILE, HEAD_FILE])
def test_a_broken_tfidf_folder_is_refused_in_one_line(tfidf_student: Path, tmp_path: Path,
                                                      damage: str, refuses_damaged) -> None:
    refuses_damaged(tfidf_student, damage, tmp_path)


def test_bad_tfidf_settings_and_data_are_refused(toy_annotations, tmp_path: Path) -> None:
    from llmdistill.errors import DataError

    frame = toy_annotations(30, seed=1)
    with pytest.raises(UsageError, match="char_ngrams"):
        train_student(frame, frame, LABELS, StudentConfig(model="tfidf", tfidf={"char_ngrams": 1}),
                      tmp_path / "a")
    with pytest.raises(UsageError, match="head_c"):
        train_student(frame, frame, LABELS, StudentConfig(model="tfidf", head_c=[1.0, 0.0]),
                      tmp_path / "c")
    one_label = frame.assign(label="neutral", prob_negative=0.0, prob_neutral=1.0,
                             prob_positive=0.0)
    with pytest.raises(DataError, match="same teacher label"):
        train_student(one_label, frame, LABELS, StudentConfig(model="tfidf"), tmp_path / "b")
    assert not any((tmp_path / name).exists() for name in "abc")
    pd.testing.assert_frame_equal(frame, toy_annotations(30, seed=1))  # inputs untouched


# ---- multi-label --------------------------------------------------------------------------------

def test_one_vs_rest_fits_each_label_to_its_soft_probability() -> None:
    from llmdistill.student.heads import fit_one_vs_rest

    x, _ = blobs(60, seed=5)
    rng = np.random.default_rng(5)
    probs = rng.uniform(size=(60, 3))
    probs[:, 2] = 0.0  # no text has label 2: a fixed, very negative logit
    head, models = fit_one_vs_rest(x, probs, None, c=0.5)
    assert head.coef.shape == (3, 4) and models[2] is None
    for j in range(2):
        dup = LogisticRegression(C=0.5, max_iter=1000, tol=1e-8).fit(
            np.vstack([x, x]), np.repeat([0, 1], 60),
            sample_weight=np.concatenate([1 - probs[:, j], probs[:, j]]))
        np.testing.assert_allclose(1 / (1 + np.exp(-head.logits(x)[:, j])),
                                   dup.predict_proba(x)[:, 1], atol=1e-3)
    assert (head.logits(x)[:, 2] < -10).all() and not head.coef[2].any()


@pytest.fixture(scope="module")
def tfidf_ml_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_student import ML_LABELS, multilabel_annotations

    out = tmp_path_factory.mktemp("tfidf-ml") / "student"
    train = multilabel_annotations(160, seed=1)
    train_student(train, multilabel_annotations(40, seed=2), ML_LABELS,
                  StudentConfig(model="tfidf"), out, {"task": "multi_label"}, anchor=train)
    return out


def test_a_multilabel_tfidf_student_gives_per_label_sigmoids_thresholds_and_label_sets(
        tfidf_ml_student: Path) -> None:
    from test_student import ML_LABELS, multilabel_annotations

    from llmdistill.tasks import get_task

    record = StudentRecord.load(tfidf_ml_student)
    assert record.kind == "tfidf" and record.task == "multi_label"
    assert len(record.thresholds) == 3 and all(0 <= t <= 1 for t in record.thresholds)
    assert 0.7 <= record.validation_agreement <= 1.0  # micro-F1 with the teacher
    clf = StudentClassifier.load(tfidf_ml_student)
    assert clf.task == "multi_label" and clf.thresholds.tolist() == record.thresholds
    held_out = multilabel_annotations(40, seed=7)
    probs = clf.predict_proba(held_out["text"].tolist(), batch_size=16)
    assert probs.shape == (40, 3) and ((probs >= 0) & (probs <= 1)).all()
    assert not np.allclose(probs.sum(axis=1), 1.0)
    answers = clf.predict(held_out["text"].tolist())
    assert answers == get_task("multi_label").decide(probs, ML_LABELS, record.thresholds)
    assert all(set(a.split("|")) <= set(ML_LABELS) for a in answers if a)
    again = StudentClassifier.load(tfidf_ml_student).predict_proba(held_out["text"].tolist())
    np.testing.assert_array_equal(probs, again)
    assert "Multi-label" in (tfidf_ml_student / "README.md").read_text()
