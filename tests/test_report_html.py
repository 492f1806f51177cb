"""report.html: self-contained, complete, escaped, and readable in a real browser."""

from __future__ import annotations

import ast
import html
import inspect
import json
import os
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import Browser, find_chromium, inspect_page
from test_report import make_compare

from llmdistill.cascade import curve_for_report
from llmdistill.config import EvaluateConfig
from llmdistill.errors import UsageError
from llmdistill.evaluate import NO_ANSWER, evaluate_predictions
from llmdistill.report import html as report_html
from llmdistill.report import (
    plots,
    render_html,
    render_markdown,
    rerender,
    summary_rows,
    write_html,
    write_report,
)
from llmdistill.report.html import SAMPLE
from llmdistill.report.markdown import verdict

LABELS = ["negative", "neutral", "positive"]
SCRIPT = "<script>alert(1)</script>"
N = 240
SPEED = {"throughput_texts_per_s": 412.5, "batch": 64, "n_texts": 256,
         "latency_ms": {"p50": 4.1, "p90": 5.2, "p99": 9.9}, "latency_samples": 50,
         "hardware": {"cpu": "Test CPU <9000>", "cores": 2, "torch_threads": 2,
                      "platform": "Linux"}}


def make_run(teacher: bool = True) -> tuple[dict, pd.DataFrame]:
    """Metrics and predictions as pipeline.evaluate makes them, from synthetic labels.

    The teacher under-predicts neutral (a collapse), gives no answer on three texts and has soft
    probabilities; the student mostly copies it. Every sixth tweet is an HTML script.
    """
    rng = np.random.default_rng(1)
    gold = rng.choice(LABELS, N, p=[0.35, 0.4, 0.25])
    t_label = np.where((gold == "neutral") & (rng.random(N) < 0.7), "positive", gold).astype(object)
    t_label[[5, 6, 7]] = None
    t_probs = np.full((N, 3), 0.15)
    for i, lab in enumerate(t_label):
        if lab is not None:
            t_probs[i, LABELS.index(lab)] = 0.7
        else:
            t_probs[i] = np.nan
    copied = np.array([x or "negative" for x in t_label], dtype=object)
    s_label = np.where(rng.random(N) < 0.2, rng.choice(LABELS, N), copied)
    s_probs = np.eye(3)[[LABELS.index(x) for x in s_label]] * 0.5 + rng.dirichlet([1] * 3, N) * 0.5
    texts = [f"{SCRIPT} {i}" if i % 6 == 0 else f"tweet {i} & <b>bold</b> ${i}"
             for i in range(N)]
    gold_df = pd.DataFrame({"id": [f"tw{i}" for i in range(N)], "text": texts, "label": gold})
    teacher_df = pd.DataFrame({"id": gold_df["id"], "status": ["ok" if x else "error"
                                                                for x in t_label],
                               "label": t_label,
                               **{f"prob_{lab}": t_probs[:, j] for j, lab in enumerate(LABELS)}})
    info = {"teacher": {"name": "gpt-<i>x</i>", "parameters": 1_540_000_000,
                        "size": {"bytes": 3_100_000_000, "mb": 3100.0, "files": 1},
                        "speed": {"seconds_per_text": 0.5},
                        "cost": {"tokens": 1000, "dollars": 0.12, "dollars_per_1000": 0.5}},
            "student": {"name": "minilm-l6", "parameters": 22_700_000,
                        "size": {"bytes": 90_900_000, "mb": 90.9, "files": 1}, "speed": SPEED},
            "manifest": {"llmdistill_version": "0.1.0", "prompt_hash": "abc123",
                         "teacher": {"spec": "qwen2.5-1.5b", "decoding": "label scoring",
                                     "prompt": "Classify <this> tweet. " * 20},
                         "demos": ["tw1", "tw2"], "seeds": {"student": 42}}}
    if not teacher:
        del info["teacher"]
    metrics = evaluate_predictions(gold_df, teacher_df if teacher else None, s_probs, LABELS,
                                   EvaluateConfig(bootstrap=200), info)
    if teacher:
        metrics["cascade"] = curve_for_report(
            s_probs, teacher_df, gold_df, LABELS,
            {"seconds_per_text": 0.5, "dollars_per_1000": 0.5}, SPEED)
    preds = gold_df.rename(columns={"label": "gold"}).copy()
    preds["student"] = s_label
    for j, lab in enumerate(LABELS):
        preds[f"student_prob_{lab}"] = s_probs[:, j]
    if teacher:
        preds["teacher"] = t_label
        for j, lab in enumerate(LABELS):
            preds[f"teacher_prob_{lab}"] = t_probs[:, j]
    return metrics, preds


class Page(HTMLParser):
    """Tags, attributes and visible text of a page."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(source)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


@pytest.fixture(scope="module")
def run() -> tuple[dict, pd.DataFrame]:
    return make_run()


@pytest.fixture(scope="module")
def page_source(run) -> str:
    return render_html(*run)


@pytest.fixture(scope="module")
def page(page_source) -> Page:
    return Page(page_source)


def _flat(s: str) -> str:
    return " ".join(s.split())


def test_page_is_self_contained(page, page_source):
    assert not page.all("script") and not page.all("iframe") and not page.all("object")
    refs = [a[k] for _, a in page.tags for k in ("src", "href") if k in a]
    assert refs and all(r.startswith("data:") for r in refs)
    assert not any(t == "link" and a.get("rel") == "stylesheet" for t, a in page.tags)
    assert "@import" not in page_source and "url(" not in page_source
    csp = [a["content"] for a in page.all("meta") if a.get("http-equiv")]
    assert csp and "default-src 'none'" in csp[0]
    assert any(a.get("name") == "viewport" for a in page.all("meta"))


def test_every_chart_is_an_svg_data_uri_with_alt_text(page):
    imgs = page.all("img")
    # 3 confusion matrices, precision and recall, 2 reliability diagrams, 3 speed/size charts,
    # the cascade curve
    assert len(imgs) == 11
    assert all(i["src"].startswith("data:image/svg+xml;base64,") and i["alt"] for i in imgs)


def test_data_text_is_escaped(page, page_source):
    assert SCRIPT not in page_source and html.escape(SCRIPT) in page_source
    assert SCRIPT in page.words  # shown as text
    assert "<i>x</i>" not in page_source and "gpt-<i>x</i>" in page.words
    assert "<b>bold</b>" not in page_source
    assert "Test CPU <9000>" in page.words and "<9000>" not in page_source
    assert "Classify <this> tweet." in page.words


def test_summary_verdict_and_warnings_come_from_the_markdown_report(run, page):
    metrics, _ = run
    words = page.words
    for row in summary_rows(metrics):
        for value in row.values():
            assert _flat(value) in words
    assert _flat(verdict(metrics)) in words
    assert "McNemar" in words and "p " in words
    for w in metrics["warnings"]:
        assert _flat(w) in words
    assert "Texts without a usable teacher answer: 3 of 240, error 3" in words


def test_collapsed_classes_are_flagged_per_model(run, page_source):
    metrics, _ = run
    assert any(w.startswith("teacher, neutral") for w in metrics["warnings"])
    teacher_table = page_source.split("teacher: gpt-&lt;i&gt;x&lt;/i&gt;</h3>")[1].split(
        "</table>")[0]
    assert "neutral <span class=\"badge\">collapsed</span>" in teacher_table
    assert "positive <span" not in teacher_table


def test_speed_size_cost_and_hardware(page):
    words = page.words
    assert "3,100.0 MB" in words and "90.9 MB" in words
    assert "412.5 (batch 64)" in words and "4.1 / 5.2 / 9.9" in words
    assert "$0.5" in words  # teacher's dollars per 1,000 texts
    assert "8.33 min" in words  # 1,000 texts at 0.5 s each
    assert "Test CPU <9000>, 2 cores, 2 torch threads" in words


def test_cascade_section_shows_the_curve_from_all_student_to_all_teacher(run, page):
    metrics, _ = run
    words = page.words
    assert "Cascade: the student first, the teacher when unsure" in words
    assert any(img.get("alt", "").startswith("cascade accuracy") for img in page.all("img"))
    curve = metrics["cascade"]["curve"]
    everything, nothing = curve[0], curve[-1]  # thresholds 0 and 1
    assert everything["coverage"] == 1.0
    assert everything["accuracy"] == pytest.approx(metrics["student"]["accuracy"]["value"])
    assert nothing["coverage"] < 0.05  # only texts with probability exactly 1 stay
    assert f"0.00 100.0% {everything['accuracy']:.1%}" in words
    assert "## Cascade: the student first" in render_markdown(metrics)


def test_manifest_lists_versions_hashes_and_seeds(page):
    words = page.words
    for key, value in (("llmdistill_version", "0.1.0"), ("prompt_hash", "abc123"),
                       ("teacher.decoding", "label scoring"), ("demos", "tw1, tw2"),
                       ("seeds.student", "42"), ("evaluation.seed", "0")):
        assert f"{key} {value}" in words


def test_disagreements_sample_with_both_labels_and_probabilities(run, page_source):
    _, preds = run
    teacher = preds["teacher"].where(preds["teacher"].isin(LABELS), NO_ANSWER)
    total = int((teacher != preds["student"]).sum())
    section = Page(page_source.split('id="disagreements"')[1].split("</section>")[0])
    assert f"{total} of {N} texts" in section.words
    assert len(section.all("tr")) == 1 + SAMPLE  # the header and the sample
    assert "0.70" in section.words  # the teacher's probability of its own label


def test_report_without_teacher_or_predictions():
    metrics, preds = make_run(teacher=False)
    page = Page(render_html(metrics, preds))
    assert len(page.all("img")) == 4  # student vs gold, precision, recall, reliability
    assert "disagree" not in page.words and "McNemar" not in page.words
    assert "minilm-l6" in page.words
    assert len(Page(render_html(metrics, None)).all("img")) == 4


def test_chart_labels_with_dollar_signs_are_text_not_mathtext():
    labels = ["$^$ refund", "$5 off", "a_b"]
    chart = plots.confusion_chart([[1, 2, 0], [0, 3, 1], [2, 0, 4]], labels, labels, "gold",
                                  "teacher", plots.PALETTE["teacher"])
    assert chart.uri.startswith("data:image/svg+xml;base64,") and chart.width > 200
    scores = {"teacher": {lab: {"precision": 0.5, "recall": 0.4} for lab in labels}}
    assert plots.per_class_chart(scores, labels, "recall", {"teacher": {labels[0]}}).width


def test_write_html_and_rerender(run, page_source, tmp_path, monkeypatch):
    metrics, preds = run
    paths = write_report(metrics, tmp_path)
    preds.to_parquet(tmp_path / "predictions.parquet", index=False)
    first = write_html(metrics, preds, tmp_path)
    assert first == tmp_path / "report.html"
    assert first.read_text() == page_source  # the sample is seeded: the page is reproducible
    (tmp_path / "report.md").write_text("stale")
    first.write_text("stale")
    assert rerender(tmp_path) == {"report": paths["report"], "html": first}
    assert paths["report"].read_text() == render_markdown(json.loads(paths["metrics"].read_text()))
    assert first.read_text() == page_source  # from metrics.json and the parquet file alike
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json", "predictions.parquet", "report.html", "report.md"]

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report_html, "render_html", lambda *args: "<p>new</p>")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_html(metrics, preds, tmp_path)
    assert first.read_text() == page_source  # the old page is intact, and no temp file is left
    assert len(list(tmp_path.iterdir())) == 4


def test_page_template_is_package_data_not_inline_code():
    template = files("llmdistill.report").joinpath(report_html.TEMPLATE)
    assert template.is_file() and "<!doctype html>" in template.read_text(encoding="utf-8")
    assert "<!doctype html>" not in inspect.getsource(report_html)


def test_report_modules_share_public_helpers_only():
    for module in files("llmdistill.report").iterdir():
        if not module.name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmdistill"):
                private = [a.name for a in node.names
                           if a.name.startswith("_") and not a.name.endswith("__")]
                assert not private, f"{module.name} imports {private} from {node.module}"


def test_rerender_needs_metrics(tmp_path):
    with pytest.raises(UsageError, match="metrics.json"):
        rerender(tmp_path)


@pytest.fixture(scope="module")
def compare_source(run) -> str:
    metrics, preds = run
    return render_html(metrics | {"compare": make_compare(N)}, preds)


def test_students_compared_section_has_the_table_the_chart_and_the_notes(compare_source):
    page = Page(compare_source)
    section = Page(compare_source.split('<section id="compare">')[1].split("</section>")[0])
    words = section.words
    section_data = make_compare(N)
    for r in section_data["rows"]:
        assert _flat(r["name"]) in words
    assert "model2vec-<b>x</b>" in words and "<b>x</b>" not in compare_source  # escaped
    frontier = [r for r in section_data["rows"] if r["pareto"]]
    assert compare_source.count('<tr class="frontier">') == len(frontier)
    assert "teacher: qwen2.5-1.5b (reference)" in words
    assert "Not shown: e5-small int8" in words and "Pareto frontier" in words
    imgs = section.all("img")
    assert len(imgs) == 1 and imgs[0]["src"].startswith("data:image/svg+xml;base64,")
    assert imgs[0]["alt"].startswith("Accuracy with its interval against texts per second")
    assert len(page.all("img")) == 12  # the report's eleven charts and this one


def test_without_a_compare_result_the_page_has_no_compare_section(page_source):
    assert 'id="compare"' not in page_source and "Students compared" not in page_source


def test_rerender_adds_the_compare_json_of_the_run_folder(run, tmp_path):
    metrics, preds = run
    write_report(metrics, tmp_path)
    preds.to_parquet(tmp_path / "predictions.parquet", index=False)
    section = make_compare(N)
    (tmp_path / "compare.json").write_text(json.dumps(section))
    paths = rerender(tmp_path)
    assert paths["chart"] == tmp_path / "compare.svg" and paths["chart"].is_file()
    assert "## Students compared" in paths["report"].read_text()
    assert "](compare.svg)" in paths["report"].read_text()
    page = paths["html"].read_text()
    assert '<section id="compare">' in page
    assert page == render_html(metrics | {"compare": section}, preds)
    (tmp_path / "compare.json").write_text("{broken")
    with pytest.raises(UsageError, match="compare.json is not valid JSON"):
        rerender(tmp_path)


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary (chromium, chromium-browser or google-chrome) "
    "on PATH: `make test` installs Debian's chromium where apt is available")


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def report_file(page_source, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(page_source, encoding="utf-8")
    return path


@needs_chromium
@pytest.mark.parametrize(("width", "mobile"), [(1280, False), (390, True)],
                         ids=["laptop", "phone"])
def test_report_in_headless_chromium(browser, report_file, width, mobile, tmp_path):
    r = inspect_page(browser, report_file, width=width, mobile=mobile)
    assert r.console_errors == []
    assert r.external_requests == [] and r.requests[0] == r.url
    assert r.scripts == 0  # the tweet that is a <script> stayed text
    assert len(r.images) == 11  # the ten charts and the cascade curve
    for img in r.images:
        assert img["width"] > 0 and img["height"] > 0 and img["complete"], img
        assert img["natural"] is None or img["natural"] > 0, img
    assert r.scroll_width <= width + 2  # nothing wider than the screen
    assert r.screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    assert r.scroll_height > 2000  # the whole page, not the first screen
    (tmp_path / f"report-{width}.png").write_bytes(r.screenshot)


@needs_chromium
@pytest.mark.parametrize(("width", "mobile"), [(1280, False), (390, True)],
                         ids=["laptop", "phone"])
def test_students_compared_section_in_headless_chromium(browser, compare_source, width, mobile,
                                                        tmp_path):
    path = tmp_path / "report.html"
    path.write_text(compare_source, encoding="utf-8")
    r = inspect_page(browser, path, width=width, mobile=mobile)
    assert r.console_errors == [] and r.external_requests == [] and r.scripts == 0
    assert len(r.images) == 12  # the report's charts and the students' chart
    chart = next(i for i in r.images if i["alt"].startswith("Accuracy with its interval"))
    assert chart["width"] > 0 and chart["height"] > 0 and chart["complete"]
    assert chart["natural"] > 0 and chart["width"] <= width
    assert r.scroll_width <= width + 2  # the wide table scrolls inside its box, or stacks
    (tmp_path / f"compare-{width}.png").write_bytes(r.screenshot)


@needs_chromium
def test_browser_check_catches_errors_and_requests(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><img src="http://127.0.0.1:9/x.png" alt="">'
                   '<script>console.error("boom")</script>')
    r = inspect_page(browser, bad, width=800, screenshot=False)
    assert r.external_requests == ["http://127.0.0.1:9/x.png"]
    assert any("boom" in e for e in r.console_errors)
    assert any(i["natural"] == 0 for i in r.images)
