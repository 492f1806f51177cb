"""report.html: the run's report as one self-contained page a person would rather look at.

The page is rendered from metrics.json (and, for the sample of disagreements, the run's
predictions) so it can be re-rendered at any time without recomputing anything. Everything it
needs is inside the file: CSS inline, charts as SVG data: URIs, no scripts, no fonts, no
requests; a Content-Security-Policy makes the browser refuse anything else. Every string that
comes from data (texts, labels, model names, manifest values) goes through Jinja2's autoescape.
The words and the summary table are the Markdown report's (`summary_rows`, `verdict`), so the
two reports never disagree. The page's markup and CSS are the Jinja2 template report.html.j2
beside this module; this module only computes what the template shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from llmdistill import __version__
from llmdistill.errors import UsageError
from llmdistill.evaluate import NO_ANSWER
from llmdistill.files import atomic_write
from llmdistill.report import plots
from llmdistill.report.format import (
    DASH,
    clean,
    count,
    duration,
    interval,
    model_info,
    money,
    optional,
    percent,
    relative_size,
    resamples,
    settings,
    vs_gold,
)
from llmdistill.report.markdown import (
    COMPARE_FILE,
    COMPARE_HEADER,
    TEACHERS_HEADER,
    compare_table,
    render_markdown,
    summary_rows,
    teachers_table,
    verdict,
    write_compare_chart,
)
from llmdistill.report.sets import render_sets_html

SAMPLE = 20  # disagreements shown
TEXT_LIMIT = 600  # characters of a text shown in the sample
LONG_VALUE = 160  # manifest values longer than this are folded away
MODELS = plots.MODELS
TEMPLATE = "report.html.j2"  # beside this module, shipped as package data
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("llmdistill.report", ""), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                          keep_trailing_newline=True)


def _collapsed(m: dict, ratio: float) -> set[str]:
    """Classes predicted for fewer than `ratio` × their gold share (evaluate's collapse rule)."""
    return {lab for lab, c in m["per_class"].items()
            if c["gold_share"] > 0 and c["predicted_share"] < ratio * c["gold_share"]}


def _models(metrics: dict) -> dict[str, dict]:
    return {who: metrics[who] for who in MODELS if metrics.get(who)}


def _name(metrics: dict, who: str) -> str:
    return str(model_info(metrics, who).get("name") or who)


def _cards(metrics: dict) -> list[dict]:
    """The numbers a reader looks for first, each with its interval or its context."""
    ci = f"{settings(metrics)['ci']:.0%} CI"
    cards = []
    for who, m in reversed(_models(metrics).items()):
        cards.append({"model": who, "title": f"{who} accuracy",
                      "value": percent(m["accuracy"]["value"]),
                      "sub": f"{interval(m['accuracy'])} {ci}; macro-F1 "
                             f"{m['macro_f1']['value']:.3f}"})
    if c := metrics.get("student_vs_teacher"):
        kappa = DASH if c["kappa"] is None else f"{c['kappa']:.2f}"
        cards.append({"model": "", "title": "student–teacher agreement",
                      "value": percent(c["agreement"]), "sub": f"Cohen's κ = {kappa}"})
    if (rel := relative_size(metrics)) != DASH:
        cards.append({"model": "student", "title": "student size", "value": rel.split(" of")[0],
                      "sub": "of the teacher's " + ("parameters" if model_info(
                          metrics, "student").get("parameters") and model_info(
                          metrics, "teacher").get("parameters") else "bytes on disk")})
    sp = model_info(metrics, "student").get("speed") or {}
    if "throughput_texts_per_s" in sp:
        lat = (sp.get("latency_ms") or {}).get("p50")
        cards.append({"model": "student", "title": "student speed",
                      "value": f"{sp['throughput_texts_per_s']:,.0f} texts/s",
                      "sub": (f"{lat:,.1f} ms per text alone (p50)" if lat is not None else "")
                      + f"; batch {sp.get('batch', '?')}"})
    return cards


def _confusions(metrics: dict) -> list[dict]:
    """Teacher vs gold, student vs gold, student vs teacher: matrices to draw side by side."""
    labels, out = metrics["labels"], []
    for who, m in _models(metrics).items():
        matrix, cols = vs_gold(m, labels)
        out.append({"title": f"{who} vs gold", "alt": f"Confusion matrix of the {who} against "
                    "the gold labels", "chart": plots.confusion_chart(
                        matrix, labels, cols, "gold label", f"{who}'s label", plots.PALETTE[who]),
                    "caption": f"Rows: gold; columns: {who}. Each cell: texts, and their share "
                               "of the row (the diagonal share is the recall)."})
    if c := metrics.get("student_vs_teacher"):
        lab = c["confusion_labels"]
        out.append({"title": "student vs teacher", "alt": "Confusion matrix of the student "
                    "against the teacher", "chart": plots.confusion_chart(
                        c["confusion"], lab, lab, "student's label", "teacher's label",
                        plots.PALETTE["student_vs_teacher"]),
                    "caption": "Rows: student; columns: teacher; the diagonal is where they "
                               "agree, whoever is right."})
    return out


def _per_class(metrics: dict, ratio: float) -> dict:
    """Precision and recall charts for both models and a table per model, collapses flagged."""
    models, labels = _models(metrics), metrics["labels"]
    if not models:
        return {}
    collapsed = {who: _collapsed(m, ratio) for who, m in models.items()}
    scores = {who: m["per_class"] for who, m in models.items()}
    charts = [{"title": metric, "alt": f"{metric} per gold class, by model",
               "chart": plots.per_class_chart(scores, labels, metric, collapsed)}
              for metric in ("precision", "recall")]
    tables = [{"model": who, "name": _name(metrics, who), "rows": [
        {"label": lab, "gold_share": percent(c["gold_share"]),
         "predicted_share": percent(c["predicted_share"]), "precision": f"{c['precision']:.3f}",
         "recall": f"{c['recall']:.3f}", "f1": f"{c['f1']:.3f}", "support": c["support"],
         "collapsed": lab in collapsed[who]} for lab, c in m["per_class"].items()]}
        for who, m in models.items()]
    return {"charts": charts, "tables": tables, "ratio": ratio,
            "any_collapsed": any(collapsed.values())}


def _calibration(metrics: dict) -> dict:
    """Reliability diagrams and ECE for each model that gave probabilities."""
    rows, charts = [], []
    for who, m in _models(metrics).items():
        if m.get("mean_confidence") is None or not m.get("reliability"):
            continue
        rows.append({"model": who, "name": _name(metrics, who), "ece": f"{m['ece']:.3f}",
                     "confidence": f"{m['mean_confidence']:.3f}",
                     "accuracy": f"{m['accuracy']['value']:.3f}", "n": m["calibrated_n"]})
        charts.append({"title": who, "alt": f"Reliability diagram of the {who}",
                       "chart": plots.reliability_chart(m["reliability"], who, m["ece"])})
    return {"rows": rows, "charts": charts, "bins": settings(metrics)["ece_bins"]} if rows else {}


def _speed(metrics: dict) -> dict:
    """Size, speed, time and cost per 1,000 texts of each model, and where they were measured."""
    rows, hardware = [], []
    size, throughput, per_text = {}, {}, {}
    for who in MODELS:
        info = model_info(metrics, who)
        if not info:
            continue
        sp, sz = info.get("speed") or {}, info.get("size") or {}
        lat = sp.get("latency_ms") or {}
        if sp.get("seconds_per_text"):  # the teacher: timed text by text while annotating
            throughput[who] = 1 / sp["seconds_per_text"]
            per_text[who] = 1000 * sp["seconds_per_text"]
            speed = f"{throughput[who]:,.2f} (one at a time)"
            latency = f"{per_text[who]:,.0f} (mean)"
        elif "throughput_texts_per_s" in sp:
            throughput[who] = sp["throughput_texts_per_s"]
            speed = f"{throughput[who]:,.1f} (batch {sp.get('batch', '?')})"
            latency = " / ".join(f"{lat[k]:,.1f}" for k in ("p50", "p90", "p99")) \
                if lat else DASH
            if "p50" in lat:
                per_text[who] = lat["p50"]
        else:
            speed = latency = DASH
        if sz.get("mb"):
            size[who] = sz["mb"]
        rows.append({"model": who, "name": _name(metrics, who),
                     "parameters": count(info.get("parameters")),
                     "size": f"{sz['mb']:,.1f} MB" if sz.get("mb") else DASH,
                     "throughput": speed, "latency": latency,
                     "per_1000": duration(1000 / throughput[who]) if who in throughput else DASH,
                     "cost": money(info.get("cost"))})
        if hw := sp.get("hardware"):
            hardware.append(f"{who}: {hw.get('cpu', '?')}, {hw.get('cores', '?')} cores, "
                            f"{hw.get('torch_threads', '?')} torch threads "
                            f"({hw.get('platform', '?')}); {sp.get('n_texts', '?')} texts"
                            f"{f'; backend {b}' if (b := sp.get('backend')) else ''}")
        elif sp.get("seconds_per_text"):
            t = ((metrics.get("info") or {}).get("manifest") or {}).get("teacher") or {}
            how = ", ".join(str(t[k]) for k in ("backend", "model") if t.get(k))
            threads = f", {t['threads']} threads" if t.get("threads") else ""
            hardware.append(f"{who}: mean time per text while annotating"
                            f"{f' ({how}{threads})' if how else ''}")
    charts = [{"title": title, "alt": f"{title} of teacher and student",
               "chart": plots.bar_chart(values, label, unit)}
              for title, values, label, unit in (
                  ("size on disk", size, "megabytes", "MB"),
                  ("throughput", throughput, "texts per second", "texts/s"),
                  ("time for one text", per_text, "milliseconds", "ms"))
              if len(values) == 2]  # a chart compares; one model's number is in the table
    return {"rows": rows, "hardware": hardware, "charts": charts} if rows else {}


def _flatten(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _flatten(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        yield key, ", ".join(str(v) for v in value) if value else DASH
    elif isinstance(value, dict | list):
        yield key, json.dumps(value, ensure_ascii=False)
    else:
        yield key, DASH if value is None else str(value)


def _manifest(metrics: dict) -> list[dict]:
    """Versions, teacher and decoding parameters, hashes, seeds: one row per leaf value."""
    manifest = (metrics.get("info") or {}).get("manifest") or {}
    items = [*_flatten(manifest), *_flatten({"evaluation": metrics.get("settings") or {}})]
    return [{"key": k, "value": v, "long": len(v) > LONG_VALUE} for k, v in items if k]


def _prob(row: pd.Series, who: str, label: str) -> str:
    p = row.get(f"{who}_prob_{label}")
    return f"{p:.2f}" if p is not None and np.isfinite(p) else DASH


def _disagreements(predictions: pd.DataFrame | None, labels: list[str], seed: int,
                   k: int) -> dict | None:
    """A seeded random sample of texts the two models label differently, in file order."""
    if predictions is None or not {"teacher", "student", "text"} <= set(predictions.columns):
        return None
    predictions = predictions.reset_index(drop=True)
    teacher = predictions["teacher"].where(predictions["teacher"].isin(labels), NO_ANSWER)
    differ = predictions[(teacher != predictions["student"]).to_numpy()]
    pick = differ.sample(n=min(k, len(differ)), random_state=seed).sort_index()
    rows = []
    for idx, r in pick.iterrows():
        text = str(r["text"])
        t_label, s_label = teacher[idx], str(r["student"])
        rows.append({"id": str(r.get("id", idx)),
                     "text": text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…",
                     "gold": DASH if pd.isna(r.get("gold")) else str(r.get("gold")),
                     "teacher": t_label, "teacher_p": _prob(r, "teacher", t_label),
                     "student": s_label, "student_p": _prob(r, "student", s_label)})
    return {"total": len(differ), "n": len(predictions), "rows": rows, "seed": seed}


def _cascade(metrics: dict) -> dict:
    """The cascade curve as table rows and a chart (empty without a teacher)."""
    cascade = metrics.get("cascade")
    if not cascade or not cascade.get("curve"):
        return {}
    curve = cascade["curve"]
    teacher = metrics.get("teacher")
    chart = plots.cascade_chart(curve, teacher["accuracy"]["value"] if teacher else None,
                                metrics["student"]["accuracy"]["value"])
    rows = [{"threshold": f"{r['threshold']:.2f}", "coverage": percent(r["coverage"]),
             "accuracy": percent(r["accuracy"]),
             "covered": optional(r["student_accuracy_on_covered"], percent),
             "teacher": f"{r['teacher_texts_per_1000']:,.0f}",
             "cpu": optional(r["cpu_seconds_per_1000"], duration),
             "dollars": optional(r["dollars_per_1000"], "${:.4f}".format)}
            for r in curve]
    return {"rows": rows,
            "cpu": any(r["cpu_seconds_per_1000"] is not None for r in curve),
            "dollars": any(r["dollars_per_1000"] is not None for r in curve),
            "figure": {"title": "accuracy and coverage by threshold",
                                     "alt": "cascade accuracy and student coverage against the "
                                            "threshold", "chart": chart}}


def _teachers(metrics: dict) -> dict | None:
    """Each teacher and the label model (the same rows as report.md), or None for one teacher
    seen raw."""
    section = metrics.get("teachers")
    if not section or not section.get("rows"):
        return None
    rows, notes, flagged = teachers_table(section)
    return {"header": TEACHERS_HEADER, "rows": rows, "notes": notes, "flagged": flagged}


def _compare(metrics: dict) -> dict | None:
    """The students compared (the same rows and notes as report.md) and their chart."""
    section = metrics.get("compare")
    if not section or not section.get("rows"):
        return None
    rows, notes = compare_table(section)
    teacher = section.get("teacher") or {}
    chart = plots.compare_chart(section["rows"], (teacher.get("accuracy") or {}).get("value"))
    classes = ["frontier" if r.get("pareto") else "" for r in section["rows"]]
    classes += ["teacher"] * (len(rows) - len(classes))  # the reference row comes last
    return {"header": COMPARE_HEADER, "intro": notes[0], "notes": notes[1:],
            "rows": [{"cells": cells, "css": css}
                     for cells, css in zip(rows, classes, strict=True)],
            "figure": {"title": "accuracy against speed",
                       "alt": "Accuracy with its interval against texts per second (log scale) "
                              "for each student, marker area by size on disk, the Pareto "
                              "frontier as a step line", "chart": chart}}


def render_html(metrics: dict, predictions: pd.DataFrame | None = None,
                sample: int = SAMPLE) -> str:
    """The report page for `metrics` (evaluate's dict); `predictions` adds the disagreements."""
    if metrics.get("task") == "multi_label":
        return render_sets_html(metrics)
    m = clean(metrics)
    s = settings(m)
    c = m.get("student_vs_teacher")
    nok = m.get("teacher_not_ok")
    return _ENV.get_template(TEMPLATE).render(
        m=m, labels=m["labels"], palette=plots.PALETTE, names={w: _name(m, w) for w in MODELS},
        ci=s["ci"], bootstrap=resamples(m),
        cards=_cards(m), summary=summary_rows(m), verdict=verdict(m), c=c,
        kappa=None if not c or c["kappa"] is None else f"{c['kappa']:.2f}",
        not_ok=nok if nok and nok.get("count") else None,
        confusions=_confusions(m),
        per_class=_per_class(m, s["collapse_ratio"]),
        calibration=_calibration(m), speed=_speed(m), cascade=_cascade(m),
        teachers=_teachers(m), compare=_compare(m),
        manifest=_manifest(m),
        disagreements=_disagreements(predictions, m["labels"], int(s["seed"]), sample),
        version=__version__, dash=DASH,
    )


def write_html(metrics: dict, predictions: pd.DataFrame | None, out_dir: Path) -> Path:
    """Write report.html into `out_dir` atomically (a reader never sees half a page)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    atomic_write(path, render_html(metrics, predictions))
    return path


def rerender(run_dir: Path) -> dict[str, Path]:
    """Rewrite report.md and report.html of a run from its metrics.json and predictions.

    Nothing is recomputed: the numbers are metrics.json's; predictions.parquet, when present,
    gives the sample of disagreements, and compare.json (`llmdistill compare`), when present,
    the "Students compared" section and its chart (compare.svg, which report.md links).
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise UsageError(f"{run_dir} has no metrics.json: run `llmdistill evaluate` first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if (compare_path := run_dir / COMPARE_FILE).is_file():
        try:
            metrics["compare"] = json.loads(compare_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UsageError(f"{compare_path} is not valid JSON: rerun `llmdistill compare "
                             f"{run_dir}` or delete it") from None
    pred_path = run_dir / "predictions.parquet"
    predictions = pd.read_parquet(pred_path) if pred_path.exists() else None
    md_path = run_dir / "report.md"
    chart = write_compare_chart(metrics, run_dir)
    atomic_write(md_path, render_markdown(metrics, chart.name if chart else None))
    paths = {"report": md_path, "html": write_html(metrics, predictions, run_dir)}
    return paths | ({"chart": chart} if chart else {})
