"""The model2vec student (student/static.py): distilled from an encoder folder or used as a
Model2Vec folder, its fast pooling equal to Model2Vec's, the folder's round trip, evaluation,
serving, and bad bases refused in one line.

The base is the tiny random BERT of conftest (the packaged MiniLM's tokenizer and vocabulary):
distilling the real MiniLM takes minutes on two cores, the tiny one seconds, and it is done once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from llmdistill import pipeline
from llmdistill.config import EvaluateConfig, ServeConfig, StudentConfig
from llmdistill.errors import UsageError
from llmdistill.serve import create_app
from llmdistill.student import static
from llmdistill.student.heads import HEAD_FILE
from llmdistill.student.predict import StudentClassifier
from llmdistill.student.record import StudentRecord
from llmdistill.student.train import train_student

pytest.importorskip("model2vec")

LABELS = ["negative", "neutral", "positive"]
PCA = {"pca_dims": 32}  # the tiny encoder is 32 wide


@pytest.fixture(scope="module")
def static_student(tiny_bert_dir: Path, toy_annotations,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model2vec student distilled from the tiny BERT, without an anchor (read-only)."""
    out = tmp_path_factory.mktemp("model2vec") / "student"
    train_student(toy_annotations(120, seed=1), toy_annotations(30, seed=2), LABELS,
                  StudentConfig(model=f"model2vec:{tiny_bert_dir}", static=PCA), out,
                  {"data": {"source": "toy"}})
    return out


def test_a_distilled_student_records_its_kind_and_beats_chance_after_loading(
        static_student: Path, toy_annotations) -> None:
    record = StudentRecord.load(static_student)
    assert record.kind == "model2vec" and record.labels == LABELS
    assert record.model_extra["features"]["source"] == "distilled"
    assert record.model_extra["features"]["dim"] == 32
    clf = StudentClassifier.load(static_student)
    assert clf.labels == LABELS and clf.backend == "numpy-model2vec" and clf.onnx_path is None
    assert clf.parameters == record.parameters > 32 * 1000  # the embedding table counts
    held_out = toy_annotations(90, seed=7)
    probs = clf.predict_proba(held_out["text"].tolist(), batch_size=16)
    assert probs.shape == (90, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert clf.predict(held_out["text"].tolist()) == [LABELS[i] for i in probs.argmax(1)]
    assert np.mean(probs.argmax(1) == held_out["label"].map(LABELS.index)) > 0.8
    val = toy_annotations(30, seed=2)
    agree = np.mean(np.array(clf.predict(val["text"].tolist())) == val["label"].to_numpy())
    assert agree == pytest.approx(record.validation_agreement)  # the folder is the trained model
    single = clf.predict_proba([held_out["text"].iloc[4]])
    np.testing.assert_allclose(single[0], probs[4], atol=1e-6)  # batching changes nothing


def test_pooling_equals_model2vec_encode_and_survives_save_and_load(
        static_student: Path, toy_annotations) -> None:
    clf = StudentClassifier.load(static_student)
    texts = toy_annotations(20, seed=9)["text"].tolist() + ["", "☃☃", "x " * 600]
    ours = clf.features.transform(texts)
    theirs = clf.features.model.encode(texts)  # Model2Vec's own encode
    np.testing.assert_allclose(ours, theirs.astype(np.float32), atol=2e-3)
    again = StudentClassifier.load(static_student)
    np.testing.assert_array_equal(clf.predict_proba(texts), again.predict_proba(texts))


def test_a_model2vec_folder_is_used_as_it_is(static_student: Path, toy_annotations,
                                             tmp_path: Path) -> None:
    # a trained model2vec student is itself a Model2Vec folder: no second distillation
    out = tmp_path / "again"
    result = train_student(toy_annotations(120, seed=1), toy_annotations(30, seed=2), LABELS,
                           StudentConfig(model=f"model2vec:{static_student}"), out)
    record = StudentRecord.load(out)
    assert record.model_extra["features"]["source"] == "model2vec folder"
    assert result.validation_agreement > 0.8
    first = StudentClassifier.load(static_student).features.transform(["great day"])
    again = StudentClassifier.load(out).features.transform(["great day"])
    np.testing.assert_array_equal(again, first)


def test_evaluate_and_serve_work_on_a_model2vec_folder(static_student: Path, toy_annotations,
                                                       tmp_path: Path) -> None:
    gold = toy_annotations(40, seed=8)[["id", "text", "label"]]
    metrics = pipeline.evaluate(static_student, gold, LABELS,
                                EvaluateConfig(bootstrap=20, speed_texts=16, latency_samples=3),
                                out_dir=tmp_path / "report")
    assert metrics["info"]["student"]["speed"]["backend"] == "numpy-model2vec"
    assert metrics["info"]["student"]["size"]["files"] == 2  # embeddings and head
    assert metrics["student"] is not None
    clf = StudentClassifier.load(static_student)
    with TestClient(create_app(clf, ServeConfig(), model_name="m2v")) as client:
        reply = client.post("/v1/classify", json={"texts": ["i love this great day", "awful"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["backend"] == "numpy-model2vec" and len(body["results"]) == 2
    assert sum(body["results"][1]["probs"].values()) == pytest.approx(1.0, abs=1e-4)


def _decoder(tmp_path: Path) -> str:
    folder = tmp_path / "decoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return str(folder)


def _no_config(tmp_path: Path) -> str:
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF")
    return str(folder)


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    return str(path)


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: "model2vec:", "names no base"),
    (lambda tmp: f"model2vec:{tmp / 'nowhere'}", "not a folder or an embedded model"),
    (lambda tmp: "model2vec:org/some-hub-model", "hub ids are not downloaded"),
    (lambda tmp: f"model2vec:{_a_file(tmp)}", "is a file"),
    (lambda tmp: f"model2vec:{_no_config(tmp)}", "no config.json"),
    (lambda tmp: f"model2vec:{_decoder(tmp)}", "not an encoder"),
])
def test_a_base_model2vec_cannot_use_is_refused_in_one_line_before_any_work(
        make, message: str, toy_annotations, tmp_path: Path) -> None:
    frame = toy_annotations(30, seed=1)
    out = tmp_path / "student"
    with pytest.raises(UsageError, match=message) as err:
        train_student(frame, frame, LABELS, StudentConfig(model=make(tmp_path)), out)
    assert "\n" not in str(err.value) and not out.exists()


def test_the_default_base_is_the_configured_static_base() -> None:
    assert static.base_name(StudentConfig(model="model2vec")) == "minilm-l6"
    assert static.base_name(StudentConfig(model="model2vec", static={"base": "x"})) == "x"
    assert static.base_name(StudentConfig(model="model2vec:/m")) == "/m"
    path, is_static = static.inspect_base("minilm-l6")
    assert path.is_dir() and not is_static


@pytest.mark.parametrize("damage", ["model.safetensors", "tokenizer.json", HEAD_FILE])
def test_a_broken_model2vec_folder_is_refused_in_one_line(static_student: Path, tmp_path: Path,
                                                          damage: str, refuses_damaged) -> None:
    refuses_damaged(static_student, damage, tmp_path)


def test_a_multilabel_model2vec_student_trains_and_gives_label_sets(tiny_bert_dir: Path,
                                                                    tmp_path: Path) -> None:
    from test_student import ML_LABELS, multilabel_annotations

    out = tmp_path / "ml"
    train_student(multilabel_annotations(80, seed=1), multilabel_annotations(24, seed=2),
                  ML_LABELS, StudentConfig(model=f"model2vec:{tiny_bert_dir}", static=PCA,
                                           thresholds="fixed", threshold=0.4), out,
                  {"task": "multi_label"})
    assert StudentRecord.load(out).thresholds == [0.4, 0.4, 0.4]
    clf = StudentClassifier.load(out)
    assert clf.task == "multi_label" and clf.backend == static.BACKEND
    texts = multilabel_annotations(12, seed=3)["text"].tolist()
    probs = clf.predict_proba(texts)
    assert probs.shape == (12, 3) and ((probs >= 0) & (probs <= 1)).all()
    assert clf.predict(texts) == ["|".join(lab for lab, p in zip(ML_LABELS, row, strict=True)
                                           if p >= 0.4) for row in probs]
