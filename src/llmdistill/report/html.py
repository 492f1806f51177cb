"""report.html: the run's report as one self-contained page a person would rather look at.

The page is rendered from metrics.json (and, for the sample of disagreements, the run's
predictions) so it can be re-rendered at any time without recomputing anything. Everything it
needs is inside the file: CSS inline, charts as SVG data: URIs, no scripts, no fonts, no
requests; a Content-Security-Policy makes the browser refuse anything else. Every string that
comes from data (texts, labels, model names, manifest values) goes through Jinja2's autoescape.
The words and the summary table are the Markdown report's (`summary_rows`, `verdict`), so the
two reports never disagree.
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
from llmdistill.report import plots
from llmdistill.report.markdown import (
    DASH,
    _clean,
    _count,
    _relative_size,
    _write_atomic,
    render_markdown,
    summary_rows,
    verdict,
)

SAMPLE = 20  # disagreements shown
TEXT_LIMIT = 600  # characters of a text shown in the sample
LONG_VALUE = 160  # manifest values longer than this are folded away
MODELS = plots.MODELS


def _collapsed(m: dict, ratio: float) -> set[str]:
    """Classes predicted for fewer than `ratio` × their gold share (evaluate's collapse rule)."""
    return {lab for lab, c in m["per_class"].items()
            if c["gold_share"] > 0 and c["predicted_share"] < ratio * c["gold_share"]}


def _models(metrics: dict) -> dict[str, dict]:
    return {who: metrics[who] for who in MODELS if metrics.get(who)}


def _info(metrics: dict, who: str) -> dict:
    return (metrics.get("info") or {}).get(who) or {}


def _name(metrics: dict, who: str) -> str:
    return str(_info(metrics, who).get("name") or who)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(iv: dict, scale: float = 100, digits: int = 1) -> str:
    return f"[{scale * iv['low']:.{digits}f}, {scale * iv['high']:.{digits}f}]"


def _cards(metrics: dict) -> list[dict]:
    """The numbers a reader looks for first, each with its interval or its context."""
    ci = f"{(metrics.get('settings') or {}).get('ci', 0.95):.0%} CI"
    cards = []
    for who, m in reversed(_models(metrics).items()):
        cards.append({"model": who, "title": f"{who} accuracy",
                      "value": _pct(m["accuracy"]["value"]),
                      "sub": f"{_interval(m['accuracy'])} {ci}; macro-F1 "
                             f"{m['macro_f1']['value']:.3f}"})
    if c := metrics.get("student_vs_teacher"):
        kappa = DASH if c["kappa"] is None else f"{c['kappa']:.2f}"
        cards.append({"model": "", "title": "student–teacher agreement",
                      "value": _pct(c["agreement"]), "sub": f"Cohen's κ = {kappa}"})
    if (rel := _relative_size(metrics)) != DASH:
        cards.append({"model": "student", "title": "student size", "value": rel.split(" of")[0],
                      "sub": "of the teacher's " + ("parameters" if _info(metrics, "student").get(
                          "parameters") and _info(metrics, "teacher").get("parameters")
                          else "bytes on disk")})
    sp = _info(metrics, "student").get("speed") or {}
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
        matrix, cols = m["confusion"], list(labels)
        if m.get("unanswered"):
            matrix = [[*row, u] for row, u in zip(matrix, m["unanswered_by_gold"], strict=True)]
            cols.append(NO_ANSWER)
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
        {"label": lab, "gold_share": _pct(c["gold_share"]),
         "predicted_share": _pct(c["predicted_share"]), "precision": f"{c['precision']:.3f}",
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
    bins = (metrics.get("settings") or {}).get("ece_bins", 15)
    return {"rows": rows, "charts": charts, "bins": bins} if rows else {}


def _money(cost: dict | None) -> str:
    if not cost or cost.get("dollars_per_1000") is None:
        return DASH
    d = cost["dollars_per_1000"]
    return "$0 billed" if d == 0 else f"${d:,.2f}" if d >= 0.01 else f"${d:.2g}"


def _duration(seconds: float) -> str:
    for unit, scale in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= scale:
            return f"{seconds / scale:,.3g} {unit}"
    return f"{seconds * 1000:,.3g} ms"


def _speed(metrics: dict) -> dict:
    """Size, speed, time and cost per 1,000 texts of each model, and where they were measured."""
    rows, hardware = [], []
    size, throughput, per_text = {}, {}, {}
    for who in MODELS:
        info = _info(metrics, who)
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
                     "parameters": _count(info.get("parameters")),
                     "size": f"{sz['mb']:,.1f} MB" if sz.get("mb") else DASH,
                     "throughput": speed, "latency": latency,
                     "per_1000": _duration(1000 / throughput[who]) if who in throughput else DASH,
                     "cost": _money(info.get("cost"))})
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
    money = "{:.4f}".format
    rows = [{"threshold": f"{r['threshold']:.2f}", "coverage": _pct(r["coverage"]),
             "accuracy": _pct(r["accuracy"]),
             "covered": DASH if r["student_accuracy_on_covered"] is None
             else _pct(r["student_accuracy_on_covered"]),
             "teacher": f"{r['teacher_texts_per_1000']:,.0f}",
             "cpu": DASH if r["cpu_seconds_per_1000"] is None
             else _duration(r["cpu_seconds_per_1000"]),
             "dollars": DASH if r["dollars_per_1000"] is None
             else "$" + money(r["dollars_per_1000"])}
            for r in curve]
    return {"rows": rows,
            "cpu": any(r["cpu_seconds_per_1000"] is not None for r in curve),
            "dollars": any(r["dollars_per_1000"] is not None for r in curve),
            "figure": {"title": "accuracy and coverage by threshold",
                                     "alt": "cascade accuracy and student coverage against the "
                                            "threshold", "chart": chart}}


def render_html(metrics: dict, predictions: pd.DataFrame | None = None,
                sample: int = SAMPLE) -> str:
    """The report page for `metrics` (evaluate's dict); `predictions` adds the disagreements."""
    m = _clean(metrics)
    settings = m.get("settings") or {}
    c = m.get("student_vs_teacher")
    nok = m.get("teacher_not_ok")
    return _TEMPLATE.render(
        m=m, labels=m["labels"], palette=plots.PALETTE, names={w: _name(m, w) for w in MODELS},
        ci=settings.get("ci", 0.95), bootstrap=settings.get("bootstrap", "?"),
        cards=_cards(m), summary=summary_rows(m), verdict=verdict(m), c=c,
        kappa=None if not c or c["kappa"] is None else f"{c['kappa']:.2f}",
        not_ok=nok if nok and nok.get("count") else None,
        confusions=_confusions(m),
        per_class=_per_class(m, settings.get("collapse_ratio", 0.6)),
        calibration=_calibration(m), speed=_speed(m), cascade=_cascade(m),
        manifest=_manifest(m),
        disagreements=_disagreements(predictions, m["labels"], int(settings.get("seed", 0)),
                                     sample),
        version=__version__, dash=DASH,
    )


def write_html(metrics: dict, predictions: pd.DataFrame | None, out_dir: Path) -> Path:
    """Write report.html into `out_dir` atomically (a reader never sees half a page)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    _write_atomic(path, render_html(metrics, predictions))
    return path


def rerender(run_dir: Path) -> dict[str, Path]:
    """Rewrite report.md and report.html of a run from its metrics.json and predictions.

    Nothing is recomputed: the numbers are metrics.json's; predictions.parquet, when present,
    gives the sample of disagreements.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise UsageError(f"{run_dir} has no metrics.json: run `llmdistill evaluate` first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    pred_path = run_dir / "predictions.parquet"
    predictions = pd.read_parquet(pred_path) if pred_path.exists() else None
    md_path = run_dir / "report.md"
    _write_atomic(md_path, render_markdown(metrics))
    return {"report": md_path, "html": write_html(metrics, predictions, run_dir)}


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=True)
_TEMPLATE = _ENV.from_string("""\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<link rel="icon" href="data:,">
<title>llmdistill report{% if m.student %}: {{ names.student }}{% endif %}
{% if m.teacher %} distilled from {{ names.teacher }}{% endif %}</title>
<style>
:root { --teacher: {{ palette.teacher }}; --student: {{ palette.student }};
  --ink: #1d1d1f; --muted: #5b6068; --line: #e2e4e8; --soft: #f6f7f9; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
body { margin: 0; background: var(--soft); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1160px; margin: 0 auto; padding: 28px 28px 40px; background: #fff; }
h1 { font-size: 1.65rem; line-height: 1.25; margin: 0 0 .3rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .7rem; padding-bottom: .3rem;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.1rem 0 .4rem; }
p { margin: .5rem 0; }
.lede, .note, figcaption { color: var(--muted); }
.note, figcaption { font-size: .85rem; }
.teacher { --c: var(--teacher); } .student { --c: var(--student); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr));
  gap: 12px; margin: 1.2rem 0; }
.card { border: 1px solid var(--line); border-top: 4px solid var(--c, #8a8f98);
  border-radius: 6px; padding: 10px 14px; }
.card .t { font-size: .8rem; color: var(--muted); text-transform: uppercase;
  letter-spacing: .03em; }
.card .v { font-size: 1.5rem; font-weight: 650; line-height: 1.3; }
.card .s { font-size: .82rem; color: var(--muted); }
.verdict { margin: 1rem 0; padding: 10px 14px; background: #f2f6fa;
  border-left: 4px solid var(--ink); }
.warnings { margin: 1rem 0; padding: 10px 14px 10px 34px; background: #fff7e6;
  border-left: 4px solid #c77700; }
.warnings li { margin: .2rem 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; font-size: .9rem;
  font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 9px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; }
td.num { white-space: nowrap; }
.chip { display: inline-block; width: .75em; height: .75em; border-radius: 2px;
  margin-right: .4em; background: var(--c, #8a8f98); vertical-align: baseline; }
.badge { display: inline-block; padding: 0 .5em; border-radius: 1em; font-size: .75rem;
  background: #fde3d7; color: #8a2c00; white-space: nowrap; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(290px, 1fr));
  gap: 18px 22px; align-items: start; }
.figs.wide { grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); }
figure { margin: 0; min-width: 0; }
figure h3 { margin-top: .3rem; }
figure img { display: block; max-width: 100%; height: auto; }  /* natural size: even text */
td.name { white-space: nowrap; }
.kv td { padding: 3px 9px; }
.kv td:first-child { white-space: nowrap; color: var(--muted); }
.kv td, code { overflow-wrap: anywhere; word-break: break-word; }
code { font: .85em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
details summary { cursor: pointer; color: var(--muted); }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.label { white-space: nowrap; }
.p { color: var(--muted); font-size: .85em; }
footer { margin-top: 2.5rem; font-size: .8rem; color: var(--muted); }
@media (max-width: 640px) {
  main { padding: 16px 14px 28px; }
  h1 { font-size: 1.35rem; }
  .figs, .figs.wide { grid-template-columns: minmax(0, 1fr); }
  table.stack thead { display: none; }
  table.stack tr { display: block; padding: 8px 0; border-bottom: 1px solid var(--line); }
  table.stack td { display: block; border: 0; padding: 2px 0; text-align: left;
    white-space: normal; }
  table.stack td.name { font-weight: 600; }
  table.stack td[data-h]::before { content: attr(data-h) ": "; color: var(--muted); }
}
</style>
</head>
<body>
{% macro img(f) %}
<img src="{{ f.chart.uri }}" width="{{ f.chart.width }}" alt="{{ f.alt }}">
{%- endmacro %}
<main>
<header>
<h1>llmdistill report</h1>
<p class="lede">
{% if m.student %}<span class="student"><span class="chip"></span>student
<strong>{{ names.student }}</strong></span>{% endif %}
{% if m.teacher %} distilled from <span class="teacher"><span class="chip"></span>teacher
<strong>{{ names.teacher }}</strong></span>{% endif %},
measured on {{ m.n }} texts with gold labels ({{ labels | join(", ") }}).
Intervals are {{ "%.0f" | format(100 * ci) }}% percentile-bootstrap intervals over texts
({{ bootstrap }} resamples).
</p>
</header>

<section id="summary">
<div class="cards">
{% for card in cards %}
<div class="card {{ card.model }}"><div class="t">{{ card.title }}</div>
<div class="v">{{ card.value }}</div><div class="s">{{ card.sub }}</div></div>
{% endfor %}
</div>
<h2>Summary</h2>
<div class="scroll"><table class="stack">
<thead><tr>{% for col in summary[0] %}<th>{{ col }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in summary %}
{% set who = row.model.split(":")[0] %}
<tr>{% for col, value in row.items() %}
{% if col == "model" %}
<td class="name {{ who if who in ("teacher", "student") else "" }}">
{% if who in ("teacher", "student") %}<span class="chip"></span>{% endif %}{{ value }}</td>
{% else %}
<td data-h="{{ col }}">{{ value }}</td>
{% endif %}
{% endfor %}</tr>
{% endfor %}
</tbody></table></div>
{% if verdict %}
<p class="verdict"><strong>{{ verdict }}</strong>
Student and teacher agree on {{ "%.1f" | format(100 * c.agreement) }}% of texts
(Cohen's κ = {{ kappa or dash }}).</p>
{% endif %}
{% if not_ok %}
<p>Texts without a usable teacher answer: {{ not_ok.count }} of {{ m.n }}
{%- for status, count in not_ok.by_status.items() %}, {{ status }} {{ count }}{% endfor %}
{{ " " }}(counted as teacher errors, never dropped).</p>
{% endif %}
{% if m.warnings %}
<ul class="warnings">{% for w in m.warnings %}<li>{{ w }}</li>{% endfor %}</ul>
{% else %}
<p>No warnings: no class collapses and every text got an answer.</p>
{% endif %}
</section>

{% if confusions %}
<section id="confusion">
<h2>Confusion matrices</h2>
<div class="figs">
{% for f in confusions %}
<figure><h3>{{ f.title }}</h3>{{ img(f) }}
<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}
</div>
</section>
{% endif %}

{% if per_class %}
<section id="per-class">
<h2>Per class</h2>
<p class="note">A class is flagged <span class="badge">collapsed</span> when a model predicts it
for fewer than {{ "%.0f" | format(100 * per_class.ratio) }}% of its share of the gold labels;
{% if per_class.any_collapsed %}its bars are hatched.{% else %}none is.{% endif %}</p>
<div class="figs wide">
{% for f in per_class.charts %}
<figure><h3>{{ f.title }}</h3>{{ img(f) }}</figure>
{% endfor %}
</div>
{% for t in per_class.tables %}
<div><h3 class="{{ t.model }}"><span class="chip"></span>{{ t.model }}: {{ t.name }}</h3>
<div class="scroll"><table>
<thead><tr><th>class</th><th class="num">gold share</th><th class="num">predicted</th>
<th class="num">precision</th><th class="num">recall</th><th class="num">F1</th>
<th class="num">support</th></tr></thead>
<tbody>
{% for r in t.rows %}
<tr><td class="label">{{ r.label }}{% if r.collapsed %} <span class="badge">collapsed</span>
{% endif %}</td>
<td class="num">{{ r.gold_share }}</td><td class="num">{{ r.predicted_share }}</td>
<td class="num">{{ r.precision }}</td><td class="num">{{ r.recall }}</td>
<td class="num">{{ r.f1 }}</td><td class="num">{{ r.support }}</td></tr>
{% endfor %}
</tbody></table></div></div>
{% endfor %}
</section>
{% endif %}

{% if calibration %}
<section id="calibration">
<h2>Calibration</h2>
<p class="note">How far each model's confidence (its top-class probability) is from how often it
is right. Expected calibration error over {{ calibration.bins }} equal-width bins of
confidence: 0 is perfect; texts without probabilities are left out. Bars: accuracy in each bin;
dots: the bin's mean confidence; below, how many texts fall in each bin.</p>
<div class="figs">
{% for f in calibration.charts %}
<figure><h3 class="{{ f.title }}"><span class="chip"></span>{{ f.title }}</h3>
{{ img(f) }}</figure>
{% endfor %}
</div>
<div class="scroll"><table>
<thead><tr><th>model</th><th class="num">ECE</th><th class="num">mean confidence</th>
<th class="num">accuracy</th><th class="num">texts</th></tr></thead>
<tbody>
{% for r in calibration.rows %}
<tr><td class="label {{ r.model }}"><span class="chip"></span>{{ r.model }}</td>
<td class="num">{{ r.ece }}</td><td class="num">{{ r.confidence }}</td>
<td class="num">{{ r.accuracy }}</td><td class="num">{{ r.n }}</td></tr>
{% endfor %}
</tbody></table></div>
</section>
{% endif %}

{% if speed %}
<section id="speed">
<h2>Size, speed and cost</h2>
<div class="scroll"><table class="stack">
<thead><tr><th>model</th><th class="num">parameters</th><th class="num">size on disk</th>
<th class="num">throughput (texts/s)</th><th class="num">latency (ms)</th>
<th class="num">time per 1,000 texts</th><th class="num">cost per 1,000 texts</th></tr></thead>
<tbody>
{% for r in speed.rows %}
<tr><td class="name {{ r.model }}"><span class="chip"></span>{{ r.model }}: {{ r.name }}</td>
<td class="num" data-h="parameters">{{ r.parameters }}</td>
<td class="num" data-h="size on disk">{{ r.size }}</td>
<td class="num" data-h="throughput (texts/s)">{{ r.throughput }}</td>
<td class="num" data-h="latency (ms)">{{ r.latency }}</td>
<td class="num" data-h="time per 1,000 texts">{{ r.per_1000 }}</td>
<td class="num" data-h="cost per 1,000 texts">{{ r.cost }}</td></tr>
{% endfor %}
</tbody></table></div>
<p class="note">Student latency is p50 / p90 / p99 for one text at a time. The teacher's
numbers are its mean time per text while it annotated. Cost counts API charges recorded while
annotating; local compute is not priced, and a dash means unknown.</p>
{% if speed.hardware %}
<p>Measured on:</p>
<ul>{% for h in speed.hardware %}<li>{{ h }}</li>{% endfor %}</ul>
{% endif %}
<div class="figs">
{% for f in speed.charts %}
<figure><h3>{{ f.title }}</h3>{{ img(f) }}</figure>
{% endfor %}
</div>
</section>
{% endif %}

{% if cascade %}
<section id="cascade">
<h2>Cascade: the student first, the teacher when unsure</h2>
<p>If the student answered only the texts whose top probability is at least the threshold and
the teacher answered the rest (<code>llmdistill serve --cascade-teacher</code>), on these gold
texts:</p>
<div class="scroll"><table class="stack">
<thead><tr><th class="num">threshold</th><th class="num">answered by the student</th>
<th class="num">accuracy</th><th class="num">student accuracy on its share</th>
<th class="num">teacher texts per 1,000</th>
{% if cascade.cpu %}<th class="num">compute per 1,000</th>{% endif %}
{% if cascade.dollars %}<th class="num">$ per 1,000</th>{% endif %}</tr></thead>
<tbody>
{% for r in cascade.rows %}
<tr><td class="num name" data-h="threshold">{{ r.threshold }}</td>
<td class="num" data-h="answered by the student">{{ r.coverage }}</td>
<td class="num" data-h="accuracy">{{ r.accuracy }}</td>
<td class="num" data-h="student accuracy on its share">{{ r.covered }}</td>
<td class="num" data-h="teacher texts per 1,000">{{ r.teacher }}</td>
{% if cascade.cpu %}<td class="num" data-h="compute per 1,000">{{ r.cpu }}</td>{% endif %}
{% if cascade.dollars %}<td class="num" data-h="$ per 1,000">{{ r.dollars }}</td>{% endif %}
</tr>
{% endfor %}
</tbody></table></div>
{% if cascade.cpu or cascade.dollars %}
<p class="note">Compute is the teacher's measured time per text for its share plus the
student's batch time for every text; dollars appear only for priced API teachers.</p>
{% endif %}
<div class="figs">
<figure><h3>{{ cascade.figure.title }}</h3>{{ img(cascade.figure) }}</figure>
</div>
</section>
{% endif %}

{% if disagreements %}
<section id="disagreements">
<h2>Where student and teacher disagree</h2>
<p class="note">{{ disagreements.total }} of {{ disagreements.n }} texts
({{ "%.1f" | format(100 * disagreements.total / disagreements.n) }}%); showing
{{ disagreements.rows | length }} drawn at random (seed {{ disagreements.seed }}). Each label
comes with the probability its model gave it.</p>
{% if disagreements.rows %}
<div class="scroll"><table class="stack">
<thead><tr><th>text</th><th>gold</th><th>teacher</th><th>student</th></tr></thead>
<tbody>
{% for r in disagreements.rows %}
<tr title="id {{ r.id }}"><td class="text">{{ r.text }}</td>
<td class="label" data-h="gold">{{ r.gold }}</td>
<td class="label" data-h="teacher">{{ r.teacher }} <span class="p">{{ r.teacher_p }}</span></td>
<td class="label" data-h="student">{{ r.student }} <span class="p">{{ r.student_p }}</span></td>
</tr>
{% endfor %}
</tbody></table></div>
{% endif %}
</section>
{% endif %}

{% if manifest %}
<section id="manifest">
<h2>Run manifest</h2>
<div class="scroll"><table class="kv">
<tbody>
{% for r in manifest %}
<tr><td>{{ r.key }}</td><td>{% if r.long %}<details><summary>{{ r.value[:60] }}…</summary>
<code>{{ r.value }}</code></details>{% else %}<code>{{ r.value }}</code>{% endif %}</td></tr>
{% endfor %}
</tbody></table></div>
</section>
{% endif %}

<footer>Written by llmdistill {{ version }} from metrics.json; a self-contained page: no scripts,
no network requests.</footer>
</main>
</body>
</html>
""")
