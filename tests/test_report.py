import json
import os

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from llmdistill.cascade import curve_for_report
from llmdistill.config import EvaluateConfig
from llmdistill.evaluate import evaluate_predictions
from llmdistill.report import print_summary, render_markdown, summary_rows, write_report
from llmdistill.report.format import clean, percent_interval, score_interval, settings
from llmdistill.report.markdown import cascade_markdown

LABELS = ["negative", "neutral", "positive"]
SPEED = {"throughput_texts_per_s": 412.5, "batch": 64, "n_texts": 256,
         "latency_ms": {"p50": 4.1, "p90": 5.2, "p99": 9.9}, "latency_samples": 50,
         "hardware": {"cpu": "Test CPU 9000", "cores": 2, "torch_threads": 2, "platform": "Linux"}}


def _synthetic_run(no_answer: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """300 texts: gold, a teacher that under-predicts neutral, a slightly worse student."""
    rng = np.random.default_rng(0)
    gold = rng.choice(LABELS, 300, p=[0.3, 0.4, 0.3])
    gold_df = pd.DataFrame({"id": range(300), "text": "t", "label": gold})
    t_label = np.where((gold == "neutral") & (rng.random(300) < 0.6), "positive", gold)
    teacher_df = pd.DataFrame({"id": range(300), "status": "ok", "label": t_label})
    teacher_df.loc[: no_answer - 1, ["status", "label"]] = ["error", None]
    s_idx = [LABELS.index(x) for x in np.where(rng.random(300) < 0.1, "negative", t_label)]
    return gold_df, teacher_df, np.eye(3)[s_idx] * 0.7 + 0.1


def make_metrics(teacher: bool = True, no_answer: int = 0) -> dict:
    """The report's metrics for `_synthetic_run`."""
    gold_df, teacher_df, probs = _synthetic_run(no_answer)
    info = {"teacher": {"name": "qwen2.5-1.5b", "parameters": 1_540_000_000,
                        "speed": {"seconds_per_text": 0.5}},
            "student": {"name": "minilm-l6", "parameters": 22_700_000,
                        "size": {"bytes": 90_900_000, "mb": 90.9, "files": 1}, "speed": SPEED},
            "manifest": {"teacher": "qwen2.5-1.5b", "seed": 42}}
    return evaluate_predictions(gold_df, teacher_df if teacher else None, probs, LABELS,
                                EvaluateConfig(bootstrap=200), info)


@pytest.fixture(scope="module")
def metrics() -> dict:
    return make_metrics()


def test_summary_rows_have_the_seed_shape_for_gold_teacher_student_and_majority(metrics):
    rows = summary_rows(metrics)
    assert [r["model"].split(":")[0].split(" (")[0] for r in rows] == [
        "gold labels", "teacher", "student", "majority class"]
    assert all(list(r) == ["model", "parameters", "accuracy", "macro-F1", "relative size"]
               for r in rows)
    student = rows[2]
    assert student["parameters"] == "22.7M" and rows[1]["parameters"] == "1.54B"
    assert student["relative size"] == "1/68 of the teacher"
    acc = metrics["student"]["accuracy"]
    assert student["accuracy"] == (f"{100 * acc['value']:.1f}% "
                                   f"[{100 * acc['low']:.1f}, {100 * acc['high']:.1f}]")
    assert rows[3]["model"] == f"majority class ({metrics['majority']['label']})"


def test_report_markdown_contains_intervals_and_verdict(metrics):
    text = render_markdown(metrics)
    t = metrics["teacher"]["macro_f1"]
    assert f"{t['value']:.3f} [{t['low']:.3f}, {t['high']:.3f}]" in text
    c = metrics["student_vs_teacher"]
    assert f"p = {c['p_value']:.2g}, McNemar exact" in text or "p < 0.001, McNemar exact" in text
    assert "The student is significantly worse than the teacher" in text  # b_better here
    assert f"Cohen's κ = {c['kappa']:.2f}" in text and "Student − teacher accuracy" in text
    for section in ("## Warnings", "## Per class", "## Confusion matrices", "## Calibration",
                    "## Speed and size", "## Manifest"):
        assert section in text
    assert "neutral: predicted for" in text  # the teacher's neutral collapse is flagged
    assert "| gold ↓ / teacher → | negative | neutral | positive |" in text
    assert "student ↓ / teacher →" in text
    assert "Test CPU 9000, 2 cores, 2 torch threads" in text
    assert "412.5 (batch 64)" in text and "2.0 (batch 1)" in text  # teacher: 0.5 s/text
    assert '"seed": 42' in text


def test_teacher_no_answers_are_shown_not_hidden():
    text = render_markdown(make_metrics(no_answer=5))
    assert "| gold ↓ / teacher → | negative | neutral | positive | (no answer) |" in text
    assert "Texts without a usable teacher answer: 5 of 300, error 5" in text


def test_report_renders_without_a_teacher():
    m = make_metrics(teacher=False)
    text = render_markdown(m)
    assert "student: minilm-l6" in text and "McNemar" not in text
    assert [r["model"] for r in summary_rows(m)][1] == "student: minilm-l6"


def test_print_summary_shows_table_verdict_and_warnings(metrics):
    console = Console(record=True, width=200)
    print_summary(metrics, console)
    out = console.export_text()
    assert "1/68 of the teacher" in out and "McNemar exact" in out
    assert "warning: teacher, neutral: predicted for" in out


def test_write_report_is_atomic_and_json_roundtrips(metrics, tmp_path, monkeypatch):
    paths = write_report(metrics | {"info": {**metrics["info"], "path": tmp_path}}, tmp_path)
    assert set(paths) == {"metrics", "report"}
    loaded = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    assert loaded["teacher"]["accuracy"] == metrics["teacher"]["accuracy"]
    assert loaded["student_vs_teacher"]["confusion"] == metrics["student_vs_teacher"]["confusion"]
    assert loaded["info"]["path"] == str(tmp_path)
    assert paths["report"].read_text(encoding="utf-8") == render_markdown(loaded)

    before = {p: p.read_bytes() for p in paths.values()}

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(make_metrics(no_answer=3), tmp_path)
    assert {p: p.read_bytes() for p in paths.values()} == before  # old files intact
    assert sorted(os.listdir(tmp_path)) == ["metrics.json", "report.md"]  # no temp files left


def test_json_output_has_no_nan_or_numpy_types(tmp_path):
    m = {"n": 1, "labels": LABELS, "x": np.float32(0.5), "y": float("nan"), "z": np.arange(2)}
    assert clean(m) == {"n": 1, "labels": LABELS, "x": 0.5, "y": None, "z": [0, 1]}


def test_settings_come_from_the_metrics_else_from_evaluate_config(metrics):
    recorded = metrics | {"settings": {**metrics["settings"], "ci": 0.9, "ece_bins": 7}}
    text = render_markdown(recorded)
    assert "Intervals are 90% percentile-bootstrap intervals over texts (200 resamples)" in text
    assert "Expected calibration error over 7 equal-width bins" in text
    bare = {k: v for k, v in metrics.items() if k != "settings"}
    assert settings(bare) == EvaluateConfig().model_dump()
    text = render_markdown(bare)
    assert f"Intervals are {EvaluateConfig().ci:.0%} percentile-bootstrap" in text
    assert "(? resamples)" in text  # a count the metrics do not record is not guessed
    assert f"over {EvaluateConfig().ece_bins} equal-width bins" in text


def test_cascade_markdown_table_by_hand():
    curve = [{"threshold": 0.6, "coverage": 0.5, "accuracy": 0.75,
              "student_accuracy_on_covered": 1.0, "teacher_texts_per_1000": 500.0,
              "cpu_seconds_per_1000": 1001.0, "dollars_per_1000": 2.5},
             {"threshold": 1.0, "coverage": 0.0, "accuracy": 0.5,
              "student_accuracy_on_covered": None, "teacher_texts_per_1000": 1000.0,
              "cpu_seconds_per_1000": None, "dollars_per_1000": None}]
    assert cascade_markdown(curve).splitlines() == [
        "| threshold | coverage (student) | accuracy | student accuracy on its share | "
        "teacher texts / 1,000 | CPU-s / 1,000 | $ / 1,000 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| 0.60 | 50.0% | 75.0% | 100.0% | 500 | 1001.0 | 2.5000 |",
        "| 1.00 | 0.0% | 50.0% | — | 1000 | — | — |"]


def test_cascade_section_lists_the_curve_from_all_student_to_all_teacher(metrics):
    gold_df, teacher_df, probs = _synthetic_run()
    m = metrics | {"cascade": curve_for_report(probs, teacher_df, gold_df, LABELS,
                                               {"seconds_per_text": 0.5}, SPEED, [0.0, 1.0])}
    text = render_markdown(m)
    assert "## Cascade: the student first, the teacher when unsure" in text
    everything, nothing = m["cascade"]["curve"]
    assert everything["accuracy"] == pytest.approx(m["student"]["accuracy"]["value"])
    assert nothing["accuracy"] == pytest.approx(m["teacher"]["accuracy"]["value"])
    assert f"| 0.00 | 100.0% | {everything['accuracy']:.1%} |" in text
    assert f"| 1.00 | 0.0% | {nothing['accuracy']:.1%} | — | 1000 |" in text
    assert "## Cascade" not in render_markdown(make_metrics(teacher=False))


def test_evaluate_stores_the_cascade_curve_in_metrics_json_and_report(tiny_student_dir, tmp_path,
                                                                      toy_annotations):
    from llmdistill import pipeline
    from llmdistill.data import text_hash

    gold = toy_annotations(60, seed=5)
    teacher = gold.assign(text_hash=gold["text"].map(text_hash))
    teacher.loc[:9, "label"] = "neutral"  # a teacher wrong on some texts, silent on one
    teacher.loc[10, ["status", "label"]] = ["error", None]
    cfg = EvaluateConfig(bootstrap=50, speed_texts=16, latency_samples=5)
    pipeline.evaluate(tiny_student_dir, gold[["id", "text", "label"]], LABELS, cfg, teacher,
                      {"seconds_per_text": 0.25}, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    curve = saved["cascade"]["curve"]
    assert [r["threshold"] for r in curve] == saved["cascade"]["thresholds"]
    assert curve[0]["coverage"] == 1.0 and curve[-1]["coverage"] < 1.0
    assert curve[-1]["cpu_seconds_per_1000"] > 0.25 * curve[-1]["teacher_texts_per_1000"]
    assert "## Cascade: the student first" in (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<section id="cascade">' in page and "cascade accuracy" in page


def make_compare(n: int = 300) -> dict:
    """A `llmdistill compare` result as compare.json holds it: four students (one an int8 row),
    the teacher, the pipeline baseline, and an int8 row left out for failing parity."""
    from llmdistill.compare import pareto_frontier

    specs = [("minilm-l6", "transformers", "torch", 22_700_000, 90.9, 105.0, 0.693),
             ("minilm-l6 int8", "transformers", "onnx-int8", 22_700_000, 23.0, 191.0, 0.690),
             ("tfidf", "tfidf", "numpy", 400_000, 3.2, 9000.0, 0.61),
             ("model2vec-<b>x</b>", "model2vec", "numpy", 7_700_000, 15.4, 7000.0, 0.60)]
    rows = []
    for name, kind, backend, params, mb, speed, acc in specs:
        rows.append({
            "name": name, "model": name.split(" ")[0], "kind": kind, "backend": backend,
            "variant": "int8" if "int8" in name else "pytorch" if kind == "transformers"
            else kind, "of": "minilm-l6" if "int8" in name else None, "model_dir": "students/x",
            "onnx_path": None, "parameters": params,
            "size": {"bytes": int(mb * 1e6), "mb": mb, "files": 1},
            "speed": {"throughput_texts_per_s": speed, "batch": 64, "n_texts": 256,
                      "latency_ms": {"p50": 1000 / speed, "p90": 1100 / speed,
                                     "p99": 1500 / speed}, "latency_samples": 50},
            "accuracy": {"value": acc, "low": acc - 0.05, "high": acc + 0.05},
            "macro_f1": {"value": acc - 0.02, "low": acc - 0.07, "high": acc + 0.03},
            "vs_teacher": {"agreement": 0.8, "kappa": 0.7, "p_value": 0.2,
                           "verdict": "no significant difference",
                           "accuracy_difference": {"value": 0.01, "low": -0.02, "high": 0.04}},
            "warnings": ["neutral: predicted for 10% of texts"] if kind == "tfidf" else [],
            "flops_per_text": 1e9 if kind == "transformers" else None,
            "flop_bound_texts_per_s": 40.0 if kind == "transformers" else None,
            "flop_bound_share": speed / 400 if kind == "transformers" else None,
            "vs_pipeline": speed / 62.0,
        })
    for r, on in zip(rows, pareto_frontier([(r["accuracy"]["value"],
                                             r["speed"]["throughput_texts_per_s"])
                                            for r in rows]), strict=True):
        r["pareto"] = on
    return {
        "run_dir": "runs/demo", "annotations_hash": "abc", "n": n, "labels": LABELS,
        "settings": {"evaluate": EvaluateConfig(bootstrap=200).model_dump(),
                     "compare": {"int8": True, "pipeline_baseline": True},
                     "export_min_agreement": 0.99},
        "hardware": {"cpu": "Test CPU 9000", "cores": 2, "torch_threads": 2, "platform": "Linux",
                     "peak_gflops": 80.0},
        "teacher": {"name": "qwen2.5-1.5b", "parameters": 1_540_000_000,
                    "accuracy": {"value": 0.63, "low": 0.57, "high": 0.68},
                    "macro_f1": {"value": 0.62, "low": 0.56, "high": 0.68}, "not_ok": 0,
                    "seconds_per_text": 1.07, "texts_per_s": 1 / 1.07},
        "baseline": {"name": 'transformers.pipeline("text-classification")',
                     "student": "minilm-l6", "model_dir": "students/minilm-l6",
                     "speed": {"throughput_texts_per_s": 62.0, "batch": 64, "n_texts": 256,
                               "latency_ms": {"p50": 30.0, "p90": 31.0, "p99": 40.0},
                               "latency_samples": 50}},
        "rows": rows,
        "frontier": [r["name"] for r in sorted((r for r in rows if r["pareto"]),
                                               key=lambda r: r["speed"]["throughput_texts_per_s"])],
        "skipped": [{"name": "e5-small int8", "reason": "int8 agrees with PyTorch on 95.00% of "
                                                         "200 validation texts, below 99.00%"}],
        "seconds": 12.0,
    }


def test_students_compared_lists_every_row_with_its_intervals_and_marks_the_frontier(metrics):
    section = make_compare()
    text = render_markdown(metrics | {"compare": section})
    part = text.split("## Students compared")[1].split("\n## ")[0]
    assert "| student | kind | backend | parameters | size on disk | texts/s |" in part
    lines = {line.split(" | ")[0].removeprefix("| "): line for line in part.splitlines()
             if line.startswith("| ") and " | " in line}
    for r in section["rows"]:
        line = lines[r["name"]]
        assert percent_interval(r["accuracy"]) in line and score_interval(r["macro_f1"]) in line
        assert line.rstrip(" |").endswith("★") == r["pareto"]
    assert "★" not in lines["model2vec-<b>x</b>"]  # tfidf is faster and more accurate
    assert "★" in lines["minilm-l6"] and "1.69×" in lines["minilm-l6"]
    assert "| 90.9 MB | 105 | 9.5 |" in lines["minilm-l6"]
    assert "teacher: qwen2.5-1.5b (reference)" in part and "0.93 (annotating)" in part
    assert "](compare.svg)" in part
    assert "Not shown: e5-small int8: int8 agrees with PyTorch on 95.00%" in part
    assert "tfidf, neutral: predicted for 10% of texts" in part
    assert "62.0 texts/s, p50 30.0 ms" in part and "80 GFLOP/s" in part
    assert "Test CPU 9000, 2 cores, 2 torch threads" in part
    assert "same 200 bootstrap resamples" in part
    assert "](compare.svg)" not in render_markdown(metrics | {"compare": section}, chart=None)


def test_without_a_compare_result_the_report_is_unchanged(metrics):
    plain = render_markdown(metrics)
    assert "Students compared" not in plain
    with_section = render_markdown(metrics | {"compare": make_compare()})
    start = with_section.index("## Students compared")
    end = with_section.index("\n\n## ", start) + 2  # the next section
    assert with_section[:start] + with_section[end:] == plain
    assert render_markdown(metrics | {"compare": {"rows": []}}) == plain


def test_write_report_writes_the_compare_chart_beside_report_md(metrics, tmp_path):
    paths = write_report(metrics | {"compare": make_compare()}, tmp_path)
    svg = tmp_path / "compare.svg"
    assert svg.read_bytes().startswith(b"<?xml") and b"<svg" in svg.read_bytes()
    assert "![" in paths["report"].read_text() and "](compare.svg)" in paths["report"].read_text()
    loaded = json.loads(paths["metrics"].read_text())
    assert loaded["compare"]["rows"][0]["name"] == "minilm-l6"


def _set_metrics():
    import numpy as np
    import pandas as pd

    from llmdistill.config import EvaluateConfig
    from llmdistill.evaluate import evaluate_sets

    rng = np.random.default_rng(0)
    labels = [f"label{i}" for i in range(25)]  # many labels: the report stays a table
    gold = rng.random((60, 25)) < 0.15
    gold[:, 0] = True
    names = ["|".join(lab for lab, g in zip(labels, row, strict=True) if g) for row in gold]
    gold_df = pd.DataFrame({"id": [str(i) for i in range(60)], "text": names, "label": names})
    noisy = gold ^ (rng.random(gold.shape) < 0.1)
    teacher = pd.DataFrame({"id": gold_df["id"], "status": "ok",
                            "label": ["|".join(lab for lab, g in zip(labels, row, strict=True)
                                               if g) for row in noisy],
                            **{f"prob_{lab}": noisy[:, j] * 0.8 + 0.1
                               for j, lab in enumerate(labels)}})
    probs = np.clip(gold * 0.7 + rng.random(gold.shape) * 0.3, 0, 1)
    return evaluate_sets(gold_df, teacher, probs, labels, EvaluateConfig(bootstrap=50), {},
                         thresholds=[0.5] * 25)


def test_multi_label_report_shows_set_metrics_and_a_row_per_label():
    from llmdistill.report.markdown import render_markdown

    md = render_markdown(_set_metrics())
    assert "micro-F1" in md and "Hamming loss" in md and "exact set" in md
    assert md.count("| label") >= 25  # one per-label row each (and the header)
    assert "Confusion" not in md


def test_multi_label_html_report_is_one_page_with_the_per_label_chart(tmp_path):
    from llmdistill.report.html import write_html

    path = write_html(_set_metrics(), None, tmp_path)
    page = path.read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page
    assert "data:image/svg+xml;base64," in page


def test_a_single_label_report_with_many_labels_lists_top_confusions_not_a_matrix():
    import numpy as np

    from llmdistill.evaluate import classification_metrics
    from llmdistill.report.format import top_confusions
    from llmdistill.report.markdown import _vs_gold

    rng = np.random.default_rng(0)
    labels = [f"intent{i:02d}" for i in range(40)]
    gold = rng.choice(labels, 400)
    pred = np.where(rng.random(400) < 0.7, gold, rng.choice(labels, 400))
    m = classification_metrics(list(gold), list(pred), labels, n_boot=20)
    table = _vs_gold(m, labels, "student")
    assert len(table.splitlines()) <= 2 + 15  # header, rule, at most 15 confusions
    top = top_confusions(m["confusion"], labels, labels)
    assert all(g != p for g, p, _, _ in top)
    assert [v for _, _, v, _ in top] == sorted((v for _, _, v, _ in top), reverse=True)
