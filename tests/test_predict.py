"""`llmdistill predict`: texts, files or stdin in; JSON lines or a file out; ONNX when exported."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmdistill.cli import app
from llmdistill.errors import UsageError
from llmdistill.student.predict import (
    StudentClassifier,
    prediction_records,
    read_texts,
    write_predictions,
)

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["I love this, wonderful and amazing", "awful", "the report for the tuesday meeting",
         "so sad and broken, the worst " * 10]


def _invoke(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, list(args), input=stdin)


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_texts_in_json_lines_out_with_the_onnx_export(exported_student_dir) -> None:
    r = _invoke("predict", "--student", str(exported_student_dir), *TEXTS)
    assert r.exit_code == 0, r.output
    rows = _json_lines(r.stdout)
    assert [row["text"] for row in rows] == TEXTS
    for row in rows:
        assert set(row["probs"]) == set(LABELS) and row["label"] in LABELS
        assert sum(row["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probs"], key=row["probs"].get)
    torch_rows = _json_lines(_invoke("predict", "--student", str(exported_student_dir),
                                     "--backend", "torch", *TEXTS).stdout)
    assert [r["label"] for r in rows] == [r["label"] for r in torch_rows]


def test_stdin_one_text_per_line_skipping_blank_lines(exported_student_dir) -> None:
    r = _invoke("predict", "--student", str(exported_student_dir), "--input", "-",
                stdin="\n".join(TEXTS[:2]) + "\n\n   \n" + TEXTS[2] + "\n")
    assert r.exit_code == 0, r.output
    assert [row["text"] for row in _json_lines(r.stdout)] == TEXTS[:3]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_file_in_and_a_file_out_keep_ids_and_order(exported_student_dir, toy_parity_csv,
                                                      tmp_path, suffix) -> None:
    out = tmp_path / f"preds{suffix}"
    r = _invoke("predict", "--student", str(exported_student_dir), "--input",
                str(toy_parity_csv), "--out", str(out))
    assert r.exit_code == 0, r.output
    source = pd.read_csv(toy_parity_csv)
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        got = pd.DataFrame([{k: v for k, v in row.items() if k != "probs"}
                            | {f"prob_{k}": v for k, v in row["probs"].items()} for row in rows])
    else:
        got = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    assert got["id"].astype(str).tolist() == source["id"].tolist()
    assert got["text"].tolist() == source["text"].tolist()
    assert list(got.columns) == ["id", "text", "label"] + [f"prob_{lab}" for lab in LABELS]
    assert (got["label"] == source["label"]).mean() >= 0.8  # the trained toy student
    np.testing.assert_allclose(got[[f"prob_{lab}" for lab in LABELS]].sum(axis=1), 1.0,
                               atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--input", "-"], "stdin held no texts"),
    (["--out", "{tmp}/p.txt", "a text"], "unknown format '.txt'"),
    (["--out", "{csv}", "a text"], "already exists"),
    (["--backend", "gpu", "a text"], "unknown backend 'gpu'"),
    (["--input", "{tmp}/missing.csv"], "not found"),
])
def test_bad_input_is_a_usage_error(exported_student_dir, toy_parity_csv, tmp_path, args,
                                    message) -> None:
    args = [a.format(tmp=tmp_path, csv=toy_parity_csv) for a in args]
    r = _invoke("predict", "--student", str(exported_student_dir), *args, stdin="\n")
    assert isinstance(r.exception, UsageError) and message in str(r.exception)


def test_the_onnx_backend_is_required_only_when_asked_for(tiny_student_dir) -> None:
    assert StudentClassifier.load(tiny_student_dir).backend == "torch"
    with pytest.raises(UsageError, match="no usable ONNX export"):
        StudentClassifier.load(tiny_student_dir, backend="onnx")


def test_helpers_read_stdin_and_write_atomically(tmp_path) -> None:
    frame = read_texts("-", stdin=io.StringIO("one\r\ntwo\n"))
    assert frame["text"].tolist() == ["one", "two"] and frame["id"].tolist() == ["r0", "r1"]
    records = prediction_records(["a"], ["text"], np.array([[0.2, 0.3, 0.5]]), LABELS)
    assert records == [{"id": "a", "text": "text", "label": "positive",
                        "probs": {"negative": 0.2, "neutral": 0.3, "positive": 0.5}}]
    out = tmp_path / "p.csv"
    write_predictions(records, LABELS, out)
    assert [p.name for p in tmp_path.iterdir()] == ["p.csv"]
    with pytest.raises(UsageError, match="already exists"):
        write_predictions(records, LABELS, out)


def test_multilabel_records_carry_the_canonical_set_and_its_list_into_every_format(
        tmp_path) -> None:
    labels = ["food", "music", "sports"]
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.2]])
    records = prediction_records(["a", "b"], ["x", "y"], probs, labels, task="multi_label",
                                 thresholds=np.array([0.5, 0.5, 0.7]))
    assert [r["label"] for r in records] == ["food", ""]
    assert [r["labels"] for r in records] == [["food"], []]
    assert records[0]["probs"] == {"food": 0.9, "music": 0.2, "sports": 0.6}
    default = prediction_records(["a"], ["x"], probs[:1], labels, task="multi_label")
    assert default[0]["label"] == "food|sports" and default[0]["labels"] == ["food", "sports"]
    write_predictions(records, labels, tmp_path / "p.csv")
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(frame.columns) == ["id", "text", "label", "prob_food", "prob_music",
                                   "prob_sports"]
    assert frame["label"].tolist() == ["food", ""]
    write_predictions(records, labels, tmp_path / "p.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert lines == records
