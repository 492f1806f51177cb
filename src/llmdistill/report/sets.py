"""The report of a multi-label run (metrics from `evaluate.evaluate_sets`): report.md and a
self-contained report.html.

A label set has no confusion matrix, so the report shows what a person checks instead: micro-
and macro-F1, exact-set accuracy and Hamming loss with intervals, the paired test on exact sets,
labels per text (the multi-label analogue of class collapse), one row per label with the
student's threshold, and calibration of the per-label probabilities. The per-label table is
sorted by gold support, so with dozens of labels the frequent ones come first.
"""

from __future__ import annotations

import html
import json
from typing import Any

from markdown_it import MarkdownIt

from llmdistill import __version__
from llmdistill.errors import UsageError
from llmdistill.report.format import (
    DASH,
    clean,
    count,
    model_info,
    p_value,
    percent,
    resamples,
    score_interval,
    settings,
)

MODELS = ("teacher", "student")


def summary_rows(metrics: dict) -> list[dict]:
    """Gold, teacher, student and the most-frequent-set baseline, one row each."""
    g = metrics["gold"]
    rows = [{"model": f"gold label sets (n = {metrics['n']})", "parameters": "human",
             "micro-F1": "reference", "macro-F1": "reference", "exact set": "reference",
             "Hamming loss": "reference", "labels / text": f"{g['cardinality']:.2f}"}]
    named = [(f"{who}: {model_info(metrics, who).get('name', '?')}", metrics.get(who),
              count(model_info(metrics, who).get("parameters"))) for who in MODELS]
    maj = metrics["majority"]
    named.append((f"most frequent set ({maj['label'] or 'none'})", maj, "0"))
    for name, m, params in named:
        if m:
            rows.append({"model": name, "parameters": params,
                         "micro-F1": score_interval(m["micro_f1"]),
                         "macro-F1": score_interval(m["macro_f1"]),
                         "exact set": score_interval(m["subset_accuracy"]),
                         "Hamming loss": score_interval(m["hamming_loss"]),
                         "labels / text": f"{m['cardinality']['predicted']:.2f}"})
    return rows


def verdict(metrics: dict) -> str | None:
    """The paired comparison in one sentence, or None without both models."""
    c = metrics.get("student_vs_teacher")
    if not c:
        return None
    words = {"a_better": "significantly better than", "b_better": "significantly worse than",
             "no significant difference": "not significantly different from"}[c["verdict"]]
    d = c["micro_f1_difference"]
    return (f"On exact label sets the student is {words} the teacher ({p_value(c['p_value'])}, "
            f"McNemar exact: only the student is right on {c['b']} texts, only the teacher on "
            f"{c['c']}). Student − teacher micro-F1: {d['value']:+.3f} "
            f"[{d['low']:+.3f}, {d['high']:+.3f}]. They give the same set to "
            f"{percent(c['agreement'])} of texts; the student's micro-F1 against the teacher's "
            f"sets is {c['micro_f1_vs']:.3f}.")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def per_label_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """One row per label, most frequent in gold first: support, then P / R / F1 of each model
    and the student's threshold."""
    labels = sorted(metrics["labels"], key=lambda lab: -metrics["gold"]["counts"][lab])
    thresholds = dict(zip(metrics["labels"], metrics.get("thresholds") or [], strict=False))
    models = [w for w in MODELS if metrics.get(w)]
    header = ["label", "gold share"] + [f"{w} P / R / F1" for w in models] + ["threshold"]
    rows = []
    for lab in labels:
        row = [lab, percent(metrics["gold"]["shares"][lab])]
        for w in models:
            s = metrics[w]["per_label"][lab]
            row.append(f"{s['precision']:.2f} / {s['recall']:.2f} / {s['f1']:.2f}")
        row.append(f"{thresholds[lab]:.2f}" if lab in thresholds else DASH)
        rows.append(row)
    return header, rows


def render_sets_markdown(metrics: dict) -> str:
    """report.md of a multi-label run."""
    s = settings(metrics)
    out = [
        "# llmdistill report (multi-label)",
        f"{metrics['n']} test texts with gold label sets; {len(metrics['labels'])} labels: "
        f"{', '.join(metrics['labels'])}. A text may carry any number of them. Intervals are "
        f"{s['ci']:.0%} percentile-bootstrap intervals over texts ({resamples(metrics)} "
        "resamples).",
        "## Summary",
        _table(list(summary_rows(metrics)[0]), [list(r.values())
                                                for r in summary_rows(metrics)]),
        "Exact set: the share of texts whose whole label set is right. Hamming loss: the share "
        "of (text, label) decisions that are wrong.",
    ]
    if v := verdict(metrics):
        out.append(v)
    if (nok := metrics.get("teacher_not_ok")) and nok["count"]:
        statuses = "".join(f", {k} {v}" for k, v in nok["by_status"].items())
        out.append(f"Texts without a usable teacher answer: {nok['count']} of "
                   f"{metrics['n']}{statuses} (counted as empty label sets, never dropped).")
    out += ["## Warnings", "\n".join(f"- {w}" for w in metrics["warnings"]) or "None."]
    header, rows = per_label_rows(metrics)
    out += ["## Per label", "Precision / recall / F1 against gold; the student's decision "
            "threshold (tuned on validation against the teacher, or fixed).", _table(header, rows)]
    calibrated = [(w, metrics[w]) for w in MODELS if metrics.get(w) and "ece" in metrics[w]]
    if calibrated:
        out += ["## Calibration", f"Expected calibration error of every (text, label) "
                f"probability against whether the label applies, over {s['ece_bins']} bins.",
                _table(["model", "ECE", "(text, label) pairs"],
                       [[w, f"{m['ece']:.3f}", m["calibrated_n"]] for w, m in calibrated])]
    sp = (model_info(metrics, "student").get("speed") or {})
    if "throughput_texts_per_s" in sp:
        out += ["## Speed", f"Student: {sp['throughput_texts_per_s']:,.1f} texts/s at batch "
                f"{sp['batch']} ({sp.get('backend', '?')} backend)."]
    if manifest := metrics.get("info", {}).get("manifest"):
        out += ["## Manifest", "```json\n" + json.dumps(clean(manifest), indent=2) + "\n```"]
    return "\n\n".join(out) + "\n"


def _chart_img(metrics: dict) -> str:
    """Per-label F1 of teacher and student as an <img> of an SVG ("" without matplotlib)."""
    try:
        from llmdistill.report import plots
    except UsageError:
        return ""
    scores = {w: metrics[w]["per_label"] for w in MODELS if metrics.get(w)}
    if not scores:
        return ""
    labels = sorted(metrics["labels"], key=lambda lab: -metrics["gold"]["counts"][lab])
    chart = plots.per_class_chart(scores, labels, "f1", {})
    return (f'<img src="{chart.uri}" width="{chart.width}" '
            'alt="F1 per label for teacher and student, most frequent label first">')


def render_sets_html(metrics: dict) -> str:
    """report.html of a multi-label run: the Markdown report as one self-contained page, with
    the per-label F1 chart."""
    m = clean(metrics)
    body = MarkdownIt("commonmark").enable("table").render(render_sets_markdown(m))
    chart = _chart_img(m)
    figure = (f'<figure><figcaption>F1 per label against gold</figcaption>{chart}</figure>'
              if chart else "")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>llmdistill report (multi-label)</title><style>{_CSS}</style></head>"
            f"<body><main>{body}{figure}<footer>llmdistill {html.escape(__version__)}</footer>"
            "</main></body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;margin:0;color:#222}main{max-width:1100px;"
        "margin:auto;padding:1rem 2rem}table{border-collapse:collapse;margin:.5rem 0}"
        "td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}th{background:#f3f3f3}"
        "pre{background:#f7f7f7;padding:.5rem;overflow:auto;max-height:24rem}"
        "figure svg{max-width:100%;height:auto}")
