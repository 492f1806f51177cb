"""ONNX/int8 export: parity with PyTorch, the failed-export path, staleness, atomic rewrites."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmdistill.cli import app
from llmdistill.config import ExportConfig
from llmdistill.errors import UsageError
from llmdistill.student import export as export_mod
from llmdistill.student.export import export_student, parity
from llmdistill.student.predict import (
    FP32_FILE,
    INT8_FILE,
    ONNX_DIR,
    PARITY_FILE,
    StudentClassifier,
    usable_export,
    weights_fingerprint,
)

LABELS = ["negative", "neutral", "positive"]
MIXED = ["love", "awful awful awful", "the meeting is on tuesday at the station",
         "great " * 80, "I hate this broken table, worst day", "happy"]


def _record(model_dir: Path) -> dict:
    return json.loads((model_dir / ONNX_DIR / PARITY_FILE).read_text())


def test_parity_counts_agreement_and_accuracy_change() -> None:
    ref = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    cand = ref.copy()
    cand[3] = [0.3, 0.6, 0.1]  # one flip: 3 of 4 agree
    p = parity(ref, cand, ["negative", "neutral", "positive", "neutral"], LABELS, 0.75)
    assert p["agreement"] == 0.75 and p["passed"]
    assert p["reference_accuracy"] == 0.75 and p["accuracy"] == 1.0
    assert p["accuracy_change"] == pytest.approx(25.0)
    assert p["max_abs_prob_diff"] == pytest.approx(0.3)
    assert not parity(ref, cand, None, LABELS, 0.76)["passed"]
    assert parity(ref, cand, None, LABELS, 0.5)["accuracy"] is None
    with pytest.raises(UsageError):
        parity(ref, cand[:2], None, LABELS, 0.9)


def test_export_writes_fp32_int8_and_a_passing_parity_record(exported_student_dir) -> None:
    onnx_dir = exported_student_dir / ONNX_DIR
    assert {p.name for p in onnx_dir.iterdir()} == {FP32_FILE, INT8_FILE, PARITY_FILE}
    record = _record(exported_student_dir)
    assert record["passed"] and record["texts"] == 200 and record["gold"]
    assert record["weights_sha256"] == weights_fingerprint(exported_student_dir)
    assert record["torch_accuracy"] >= 0.8  # the trained toy student is good
    by_file = {v["file"]: v for v in record["variants"]}
    assert by_file[FP32_FILE]["agreement"] == 1.0
    assert by_file[FP32_FILE]["max_abs_prob_diff"] < 1e-4
    assert by_file[INT8_FILE]["agreement"] >= record["threshold"] == 0.95
    assert abs(by_file[INT8_FILE]["accuracy_change"]) <= 5.0
    assert by_file[INT8_FILE]["bytes"] < by_file[FP32_FILE]["bytes"]
    leftovers = [p.name for p in exported_student_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_auto_backend_runs_int8_and_matches_pytorch_on_mixed_lengths(exported_student_dir):
    auto = StudentClassifier.load(exported_student_dir)
    torch_clf = StudentClassifier.load(exported_student_dir, backend="torch")
    fp32 = StudentClassifier.load_onnx(exported_student_dir,
                                        exported_student_dir / ONNX_DIR / FP32_FILE, None)
    assert auto.backend == "onnx-int8" and fp32.backend == "onnx-fp32"
    assert torch_clf.backend == "torch"
    assert auto.labels == torch_clf.labels == LABELS
    assert auto.parameters == torch_clf.parameters > 0
    ref = torch_clf.predict_proba(MIXED, batch_size=4)  # padded batches and a truncated text
    np.testing.assert_allclose(fp32.predict_proba(MIXED, batch_size=4), ref, atol=1e-4)
    got = auto.predict_proba(MIXED, batch_size=4)
    assert got.shape == (len(MIXED), 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 5 / 6
    # order is the caller's, whatever the batch size (dynamic int8 quantizes activations with
    # one scale per batch, so the numbers move a little with the batch's other texts)
    np.testing.assert_allclose(auto.predict_proba(MIXED[::-1], batch_size=64), got[::-1],
                               atol=0.02)
    np.testing.assert_allclose(fp32.predict_proba(MIXED[::-1], batch_size=64),
                               fp32.predict_proba(MIXED, batch_size=4)[::-1], atol=1e-5)
    assert auto.predict_proba([]).shape == (0, 3)


def _shift_bias(src: Path, dst: Path, *_args) -> None:
    """A stand-in for quantization whose 'int8' model always says negative."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == "classifier.bias":
            bias = numpy_helper.to_array(init).copy()
            bias[0] += 100.0
            init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, str(dst))


@pytest.fixture
def student_copy(tiny_student_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "student"
    shutil.copytree(tiny_student_dir, out)
    return out


def test_failed_parity_exits_1_keeps_the_file_marked_failed_and_is_never_used(
        student_copy, toy_parity_csv, monkeypatch) -> None:
    monkeypatch.setattr(export_mod, "quantize_int8", _shift_bias)
    r = CliRunner().invoke(app, ["export", str(student_copy), "--int8", "--data",
                                 str(toy_parity_csv)])
    assert r.exit_code == 1, r.output
    assert "FAILED" in r.output and "never used" in r.output
    record = _record(student_copy)
    by_file = {v["file"]: v for v in record["variants"]}
    assert not record["passed"]
    assert by_file[FP32_FILE]["passed"] and not by_file[INT8_FILE]["passed"]
    assert by_file[INT8_FILE]["agreement"] < 0.5
    assert (student_copy / ONNX_DIR / INT8_FILE).exists()  # kept for inspection
    assert StudentClassifier.load(student_copy).backend == "onnx-fp32"  # int8 skipped


def test_export_cli_prints_parity_and_reexport_replaces_the_old_export(
        student_copy, toy_parity_csv, monkeypatch) -> None:
    monkeypatch.setattr(export_mod, "quantize_int8", _shift_bias)
    CliRunner().invoke(app, ["export", str(student_copy), "--int8", "--data",
                             str(toy_parity_csv)])
    r = CliRunner().invoke(app, ["export", str(student_copy), "--data", str(toy_parity_csv),
                                 "--min-agreement", "0.95"])
    assert r.exit_code == 0, r.output
    assert "agreement 100.00%" in r.output and "passed" in r.output
    assert sorted(p.name for p in (student_copy / ONNX_DIR).iterdir()) == [FP32_FILE,
                                                                           PARITY_FILE]
    assert _record(student_copy)["threshold"] == 0.95
    assert not [p for p in student_copy.iterdir() if p.name.startswith(".onnx")]


def test_an_export_older_than_the_weights_is_not_used(exported_student_dir, tmp_path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(exported_student_dir, stale)
    config = json.loads((stale / "config.json").read_text())
    config["retrained"] = True  # any change to the weights or config
    (stale / "config.json").write_text(json.dumps(config))
    path, why = usable_export(stale)
    assert path is None and "older than the weights" in why
    assert StudentClassifier.load(stale).backend == "torch"
    with pytest.raises(UsageError, match="llmdistill export"):
        StudentClassifier.load(stale, backend="onnx")


def test_export_refuses_a_folder_without_a_model_and_labels_outside_the_student(
        tmp_path, student_copy) -> None:
    with pytest.raises(UsageError, match="not a model folder"):
        export_student(tmp_path, ["a text"])
    with pytest.raises(UsageError, match="not the student's"):
        export_student(student_copy, ["a text"], ["joy"])
    with pytest.raises(UsageError, match="no parity texts"):
        export_student(student_copy, [])
    assert not (student_copy / ONNX_DIR).exists()


def test_max_texts_caps_the_parity_set(student_copy, toy_parity_csv) -> None:
    frame = pd.read_csv(toy_parity_csv)
    result = export_student(student_copy, frame["text"].tolist(), frame["label"].tolist(),
                            ExportConfig(max_texts=50))
    assert result.passed and result.record["texts"] == 50
    assert [v["file"] for v in result.variants] == [FP32_FILE]


def _onnx_ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_static_int8_writes_a_qdq_model_that_runs_and_records_how_it_was_made(
        student_copy, toy_parity_csv, toy_annotations) -> None:
    frame = pd.read_csv(toy_parity_csv)
    texts = frame["text"].tolist()
    calibration = toy_annotations(60, seed=11)["text"].tolist() + texts[:5]  # 5 parity texts
    cfg = ExportConfig(int8_method="static", calibrator="minmax", calibration_size=40,
                       outlier_channels=2, outlier_ratio=1.0, int8_exclude=["layer.0/"],
                       min_agreement=0.5)
    result = export_student(student_copy, texts, frame["label"].tolist(), cfg, int8=True,
                            calibration_texts=calibration)
    int8 = {v["file"]: v for v in result.variants}[INT8_FILE]
    q = int8["quantization"]
    assert q["method"] == "static" and q["per_channel"]
    assert q["calibration"]["data"] == "given texts" and q["calibration"]["calibrator"] == "minmax"
    assert q["calibration"]["dropped_parity_overlap"] >= 1  # parity texts never calibrate
    assert 1 <= q["calibration"]["texts"] <= 40
    assert q["outlier_split"]["inputs"] >= 1 and q["outlier_split"]["channels"] == 2
    assert q["fp32_nodes"] and all("layer.0/" in n or "attention/self/MatMul" in n
                                   for n in q["fp32_nodes"])
    assert any("layer.0/" in n for n in q["fp32_nodes"]) and q["int8_nodes"] >= 1
    assert 0.0 <= int8["confident_agreement"] <= 1.0 and int8["confident_texts"] >= 1
    path = student_copy / ONNX_DIR / INT8_FILE
    assert {"QuantizeLinear", "DequantizeLinear"} <= _onnx_ops(path)
    probs = StudentClassifier.load_onnx(student_copy, path, 1).predict_proba(MIXED, batch_size=4)
    assert probs.shape == (len(MIXED), 3) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert _record(student_copy)["settings"]["int8_method"] == "static"


def test_a_real_int8_model_that_fails_parity_is_kept_marked_failed_and_never_used(
        student_copy, toy_parity_csv, monkeypatch) -> None:
    real = export_mod.quantize_int8

    def broken(src, dst, cfg, calibration):
        info = real(src, dst, cfg, calibration)
        _shift_bias(dst, dst)  # the quantized model, made to say negative
        return info

    monkeypatch.setattr(export_mod, "quantize_int8", broken)
    frame = pd.read_csv(toy_parity_csv)
    result = export_student(student_copy, frame["text"].tolist(), frame["label"].tolist(),
                            ExportConfig(int8_method="dynamic"), int8=True,
                            calibration_texts=frame["text"].tolist()[:40] + ["a calm text"])
    int8 = {v["file"]: v for v in result.variants}[INT8_FILE]
    assert not result.passed and not int8["passed"]
    assert int8["quantization"]["method"] == "dynamic"
    assert (student_copy / ONNX_DIR / INT8_FILE).exists()
    assert StudentClassifier.load(student_copy).backend == "onnx-fp32"


def test_the_outlier_split_is_exact_in_fp32(exported_student_dir, tmp_path) -> None:
    import onnx

    from llmdistill.student.export import (
        activation_absmax,
        calibrate_on,
        matmul_inputs,
        preprocess,
        split_outlier_channels,
    )

    clf = StudentClassifier.load(exported_student_dir, backend="torch")
    pre = tmp_path / "pre.onnx"
    preprocess(exported_student_dir / ONNX_DIR / FP32_FILE, pre)
    model = onnx.load(str(pre))
    groups = matmul_inputs(model)
    cal = calibrate_on(clf, ExportConfig(), ["held out"], MIXED + ["the station is busy"])
    absmax = activation_absmax(pre, list(groups), cal.batches, tmp_path)
    assert set(absmax) == set(groups) and all((a >= 0).all() for a in absmax.values())
    fp32, split = split_outlier_channels(model, groups, absmax, channels=3, ratio=1.0)
    assert split == list(groups) and len(fp32) == sum(len(g) for g in groups.values())
    onnx.save(model, str(tmp_path / "split.onnx"))
    onnx.checker.check_model(str(tmp_path / "split.onnx"))
    got = StudentClassifier.load_onnx(exported_student_dir, tmp_path / "split.onnx", 1, 1)
    np.testing.assert_allclose(got.predict_proba(MIXED, batch_size=4),
                               clf.predict_proba(MIXED, batch_size=4), atol=1e-5)


def test_int8_exclude_keeps_attention_scores_and_refuses_a_pattern_matching_nothing(
        exported_student_dir) -> None:
    import onnx

    from llmdistill.student.export import int8_fp32_nodes

    model = onnx.load(str(exported_student_dir / ONNX_DIR / FP32_FILE))
    inits = {i.name for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    auto = int8_fp32_nodes(model, "auto")
    assert auto and all(not set(by_name[n].input) & inits for n in auto)
    more = int8_fp32_nodes(model, ["layer.1/"])
    assert set(auto) < set(more) and all(n in auto or "layer.1/" in n for n in more)
    with pytest.raises(UsageError, match="matches no MatMul"):
        int8_fp32_nodes(model, ["no-such-node"])


def test_a_numpy_student_kind_has_nothing_to_export(tmp_path) -> None:
    from llmdistill import __version__
    from llmdistill.student.record import StudentRecord

    folder = tmp_path / "tfidf-student"
    folder.mkdir()
    StudentRecord(llmdistill_version=__version__, labels=LABELS, kind="tfidf").save(folder)
    before = sorted(p.name for p in folder.iterdir())
    result = export_student(folder, ["any text"], int8=True)
    assert result.nothing_to_export and result.passed and result.variants == []
    assert "tfidf" in result.record["reason"] and "nothing to export" in result.record["reason"]
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written


def test_parity_reports_agreement_on_confident_texts_apart_from_near_ties() -> None:
    ref = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.41, 0.40, 0.19], [0.2, 0.2, 0.6]])
    cand = ref.copy()
    cand[2] = [0.40, 0.41, 0.19]  # the near-tie flips
    p = parity(ref, cand, None, LABELS, 0.99, margin=0.1)
    assert p["agreement"] == 0.75 and not p["passed"]
    assert p["confident_agreement"] == 1.0 and p["confident_texts"] == 3
    assert parity(ref, cand, None, LABELS, 0.5, margin=0.9)["confident_agreement"] is None


# ---- multi-label and windows --------------------------------------------------------------------

def test_multilabel_parity_compares_label_sets_not_the_top_label() -> None:
    ref = np.array([[0.9, 0.6, 0.1], [0.9, 0.2, 0.1], [0.3, 0.2, 0.45]])
    cand = np.array([[0.8, 0.55, 0.2],  # the same set {a, b}, other numbers
                     [0.9, 0.6, 0.1],  # the same top label but the set {a, b}, not {a}
                     [0.3, 0.2, 0.55]])  # a label crosses its threshold
    p = parity(ref, cand, ["a|b", "a", "c"], ["a", "b", "c"], 0.5, margin=0.1,
               task="multi_label", thresholds=np.array([0.5, 0.5, 0.5]))
    assert p["agreement"] == pytest.approx(1 / 3) and not p["passed"]
    assert p["reference_accuracy"] == pytest.approx(2 / 3)  # exact sets against gold
    assert p["accuracy"] == pytest.approx(2 / 3)  # right on the third, wrong on the second
    assert p["confident_texts"] == 2 and p["confident_agreement"] == 0.5
    lower = parity(ref, cand, None, ["a", "b", "c"], 0.5, task="multi_label",
                   thresholds=np.array([0.5, 0.7, 0.4]))  # the record's thresholds decide
    assert lower["agreement"] == 1.0 and lower["passed"]


def test_a_windowed_multilabel_student_exports_with_set_parity_and_runs_windows_on_onnx(
        tiny_bert_dir, tmp_path) -> None:
    from test_student import ML_LABELS, multilabel_annotations, tiny_cfg

    from llmdistill.student.train import train_student

    train, val = multilabel_annotations(60, seed=1), multilabel_annotations(20, seed=2)
    train.loc[::4, "text"] = train.loc[::4, "text"].map(lambda t: " ".join([t] * 6))
    out = tmp_path / "student"
    cfg = tiny_cfg(tiny_bert_dir, epochs=2, max_length=16, long_text="windows",
                   window_stride=8, max_windows=3, window_pool="max")
    train_student(train, val, ML_LABELS, cfg, out, {"task": "multi_label"})
    parity_set = multilabel_annotations(40, seed=3)
    texts = parity_set["text"].tolist() + [" ".join(["pizza guitar"] * 30)] * 2
    gold = parity_set["label"].tolist() + ["food|music"] * 2
    result = export_student(out, texts, gold, ExportConfig(), int8=False)
    assert result.passed, result.record
    record = _record(out)
    assert record["task"] == "multi_label" and len(record["thresholds"]) == 3
    assert record["variants"][0]["agreement"] == 1.0 and record["torch_accuracy"] is not None
    onnx_clf = StudentClassifier.load(out)
    torch_clf = StudentClassifier.load(out, backend="torch")
    assert onnx_clf.backend == "onnx-fp32" and onnx_clf.task == "multi_label"
    assert onnx_clf.windowing == torch_clf.windowing and onnx_clf.windowing.pool == "max"
    np.testing.assert_allclose(onnx_clf.predict_proba(texts), torch_clf.predict_proba(texts),
                               atol=1e-4)
    assert onnx_clf.predict(texts[-2:]) == torch_clf.predict(texts[-2:])


def test_openvino_backend_without_an_openvino_check_names_the_export_flag(
        exported_student_dir) -> None:
    path, why = usable_export(exported_student_dir, "openvino")
    assert path is None and "not checked on openvino" in why
    with pytest.raises(UsageError, match="--openvino"):
        StudentClassifier.load(exported_student_dir, backend="openvino")
    with pytest.raises(UsageError, match="openvino"):
        StudentClassifier.load(exported_student_dir, backend="tensorrt")  # type: ignore[arg-type]
    assert StudentClassifier.load(exported_student_dir).backend == "onnx-int8"


def test_openvino_export_checks_each_file_on_both_runtimes_and_runs_the_passing_one(
        student_copy, toy_parity_csv) -> None:
    pytest.importorskip("openvino")
    frame = pd.read_csv(toy_parity_csv)
    result = export_student(student_copy, frame["text"].tolist(), frame["label"].tolist(),
                            ExportConfig(min_agreement=0.95, openvino=True), int8=True)
    by = {(v["file"], v["runtime"]): v for v in result.variants}
    assert set(by) == {(f, r) for f in (FP32_FILE, INT8_FILE)
                       for r in ("onnxruntime", "openvino")}
    assert by[FP32_FILE, "openvino"]["agreement"] == 1.0
    assert by[FP32_FILE, "openvino"]["max_abs_prob_diff"] < 1e-4
    assert StudentClassifier.load(student_copy).backend.startswith("onnx-")  # auto: ORT
    ov = StudentClassifier.load(student_copy, backend="openvino", threads=1)
    expected = "openvino-int8" if by[INT8_FILE, "openvino"]["passed"] else "openvino-fp32"
    assert ov.backend == expected
    ref = StudentClassifier.load(student_copy, backend="torch").predict_proba(MIXED, 4)
    got = ov.predict_proba(MIXED, batch_size=4)  # padded batches of several widths
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    fp32 = StudentClassifier.load_onnx(student_copy, student_copy / ONNX_DIR / FP32_FILE, 1,
                                        runtime="openvino")
    np.testing.assert_allclose(fp32.predict_proba(MIXED, batch_size=4), ref, atol=1e-4)


def test_export_cli_openvino_flag_prints_one_line_per_file_and_runtime(
        student_copy, toy_parity_csv) -> None:
    pytest.importorskip("openvino")
    r = CliRunner().invoke(app, ["export", str(student_copy), "--openvino", "--data",
                                 str(toy_parity_csv), "--min-agreement", "0.95"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if FP32_FILE in ln and "agreement" in ln]
    assert len(lines) == 2 and "onnxruntime" in lines[0] and "openvino" in lines[1]
    assert StudentClassifier.load(student_copy, backend="openvino").backend == "openvino-fp32"
