"""The report a person reads: metrics.json in, report.md and a terminal table out.

Every accuracy and macro-F1 carries its bootstrap interval; every comparison says whether the
difference is significant. `info` (from the caller) is optional throughout: a missing number is
shown as "—", never invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from llmdistill.errors import UsageError
from llmdistill.files import atomic_write
from llmdistill.report import sets
from llmdistill.report.format import (
    DASH,
    MAX_MATRIX,
    clean,
    count,
    model_info,
    optional,
    p_value,
    percent,
    percent_interval,
    relative_size,
    resamples,
    score_interval,
    settings,
    top_confusions,
    vs_gold,
)


def summary_rows(metrics: dict) -> list[dict]:
    """The seed's table: gold, teacher, student and the majority-class baseline."""
    rows = [{"model": f"gold labels (n = {metrics['n']})", "parameters": "human",
             "accuracy": "reference", "macro-F1": "reference", "relative size": DASH}]
    for who in ("teacher", "student"):
        m, info = metrics.get(who), model_info(metrics, who)
        if m:
            rows.append({"model": f"{who}: {info.get('name', '?')}",
                         "parameters": count(info.get("parameters")),
                         "accuracy": percent_interval(m["accuracy"]),
                         "macro-F1": score_interval(m["macro_f1"]),
                         "relative size": "reference" if who == "teacher"
                         else relative_size(metrics)})
    maj = metrics["majority"]
    rows.append({"model": f"majority class ({maj['label']})", "parameters": "0",
                 "accuracy": percent_interval(maj["accuracy"]),
                 "macro-F1": score_interval(maj["macro_f1"]),
                 "relative size": DASH})
    return rows


def verdict(metrics: dict) -> str | None:
    """The paired test in one sentence, or None without both models."""
    c = metrics.get("student_vs_teacher")
    if not c:
        return None
    words = {"a_better": "significantly better than", "b_better": "significantly worse than",
             "no significant difference": "not significantly different from"}[c["verdict"]]
    d = c["accuracy_difference"]
    return (f"The student is {words} the teacher ({p_value(c['p_value'])}, McNemar exact: only the "
            f"student is right on {c['b']} texts, only the teacher on {c['c']}). Student − "
            f"teacher accuracy: {100 * d['value']:+.1f} points "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}].")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _per_class(m: dict) -> str:
    return _table(
        ["class", "gold share", "predicted share", "precision", "recall", "F1", "support"],
        [[lab, percent(c["gold_share"]), percent(c["predicted_share"]), f"{c['precision']:.3f}",
          f"{c['recall']:.3f}", f"{c['f1']:.3f}", c["support"]]
         for lab, c in m["per_class"].items()],
    )


def _confusion(matrix: list[list[int]], rows: list[str], cols: list[str], corner: str) -> str:
    return _table([corner, *cols], [[r, *line] for r, line in zip(rows, matrix, strict=True)])


def _vs_gold(m: dict, labels: list[str], who: str) -> str:
    matrix, cols = vs_gold(m, labels)
    if len(labels) > MAX_MATRIX:  # a k × k table is unreadable: the largest confusions instead
        return _table(["gold", f"{who} said", "texts", "share of the gold label"],
                      [[g, p, v, percent(share)]
                       for g, p, v, share in top_confusions(matrix, labels, cols)])
    return _confusion(matrix, labels, cols, f"gold ↓ / {who} →")


def cascade_markdown(curve: list[dict]) -> str:
    """The cascade curve (`cascade.cascade_curve`'s rows) as a Markdown table."""
    return _table(
        ["threshold", "coverage (student)", "accuracy", "student accuracy on its share",
         "teacher texts / 1,000", "CPU-s / 1,000", "$ / 1,000"],
        [[f"{r['threshold']:.2f}", percent(r["coverage"]), percent(r["accuracy"]),
          optional(r["student_accuracy_on_covered"], percent), f"{r['teacher_texts_per_1000']:.0f}",
          optional(r["cpu_seconds_per_1000"], "{:.1f}".format),
          optional(r["dollars_per_1000"], "{:.4f}".format)] for r in curve],
    )


def _speed_rows(metrics: dict) -> tuple[list[list[str]], list[str]]:
    rows, hardware = [], []
    for who in ("teacher", "student"):
        info = model_info(metrics, who)
        if not info:
            continue
        sp, size = info.get("speed") or {}, info.get("size") or {}
        lat = sp.get("latency_ms")
        if "seconds_per_text" in sp:  # a teacher's measured annotation time
            sp = {"throughput_texts_per_s": 1 / sp["seconds_per_text"], "batch": 1, **sp}
        rows.append([f"{who}: {info.get('name', '?')}", count(info.get("parameters")),
                     f"{size['mb']:,.1f} MB" if size else DASH,
                     f"{sp['throughput_texts_per_s']:,.1f} (batch {sp['batch']})"
                     if "throughput_texts_per_s" in sp else DASH,
                     " / ".join(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99")) if lat else DASH])
        if hw := sp.get("hardware"):
            hardware.append(f"{who}: {hw['cpu']}, {hw['cores']} cores, {hw['torch_threads']} "
                            f"torch threads ({hw.get('platform', '?')}), {sp['n_texts']} texts"
                            f"{f', backend {b}' if (b := sp.get('backend')) else ''}")
    return rows, hardware


def cost_line(metrics: dict) -> str | None:
    """What labelling cost: tokens, dollars and dollars per 1,000 labels (priced teachers)."""
    cost = model_info(metrics, "teacher").get("cost") or {}
    if not cost.get("tokens"):
        return None
    per = cost.get("dollars_per_1000") or 0.0
    return (f"The teacher used {cost['tokens']:,} tokens for this run's annotations: "
            f"${cost.get('dollars') or 0:.4f}, ${per:.4f} per 1,000 labels. The student's "
            "marginal cost per prediction is its CPU time (see Speed).")


TEACHERS_HEADER = ["teacher", "accuracy", "macro-F1", "ECE (raw → calibrated)", "no answer",
                   "student − teacher (points)", "McNemar"]


def teachers_table(section: dict) -> tuple[list[list[Any]], list[str], list[list[str]]]:
    """Rows of each teacher vs gold and the student vs it; notes on the label model and
    confident learning; a sample of flagged texts (text, teacher, suggested). For report.md and
    report.html alike."""
    rows = []
    for r in section["rows"]:
        c = r["student_vs"]
        d = c["accuracy_difference"]
        ece = DASH if r.get("ece") is None else f"{r['ece']:.3f}"
        if r.get("ece_calibrated") is not None:
            ece += f" → {r['ece_calibrated']:.3f}"
        rows.append([r["name"], percent_interval(r["accuracy"]), score_interval(r["macro_f1"]),
                     ece, r["not_ok"],
                     f"{100 * d['value']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]",
                     p_value(c["p_value"])])
    notes, flagged = [], []
    lm = section.get("label_model") or {}
    if method := lm.get("method"):
        anchor = section.get("anchor") or {}
        mode = (lm.get("calibration") or {}).get("mode", DASH)
        notes.append(f"Label model: {method}, calibration {mode}, fitted "
                     f"on {anchor.get('rows', 0)} anchor rows ({anchor.get('source', DASH)}); "
                     "the teacher row of the summary is its aggregate, which is what the student "
                     "learned from.")
    if conf := section.get("confident"):
        notes.append(f"Confident learning flagged {conf.get('count', 0)} training texts as likely "
                     f"teacher errors ({percent(conf.get('share') or 0.0)} of those checked).")
        flagged = [[str(x.get("text", ""))[:80], str(x.get("teacher_label", DASH)),
                    str(x.get("suggested", DASH))] for x in (conf.get("sample") or [])[:10]]
    return rows, notes, flagged


def teachers_markdown(section: dict) -> str:
    """The teachers section of report.md."""
    rows, notes, flagged = teachers_table(section)
    out = [_table(TEACHERS_HEADER, rows), *notes]
    if flagged:
        out.append(_table(["flagged text", "teacher", "suggested"],
                          [[t.replace("|", "/"), a, b] for t, a, b in flagged]))
    return "\n\n".join(out)


COMPARE_FILE = "compare.json"  # `llmdistill compare` writes it into the run folder
COMPARE_CHART = "compare.svg"  # its chart, beside report.md
COMPARE_HEADER = ["student", "kind", "backend", "parameters", "size on disk", "texts/s",
                  "p50 ms (batch 1)", "× pipeline", "of the FLOP bound",
                  "agreement with teacher", "accuracy", "macro-F1", "frontier"]
FRONTIER_MARK = "★"


def _rate(v: float) -> str:
    """Texts/s or a ratio: 191 not 191.37; two significant digits below 1."""
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 1 else f"{v:.2g}"


def _megabytes(mb: float) -> str:
    return f"{mb:,.1f} MB" if mb >= 1 else f"{1000 * mb:,.0f} kB" if mb >= 0.001 else \
        f"{1e6 * mb:,.0f} B"


def _share(v: float) -> str:
    """A share too small for one decimal still shows: 0.047%."""
    return percent(v) if v >= 0.001 else f"{100 * v:.2g}%"


def compare_table(section: dict) -> tuple[list[list[str]], list[str]]:
    """The students compared (`compare.json`) as rows under COMPARE_HEADER, the teacher's
    reference row last, and the notes that say how each column was measured. For report.md and
    report.html alike."""
    rows = []
    for r in section["rows"]:
        sp = r["speed"]
        vs = r.get("vs_teacher") or {}
        rows.append([
            r["name"], r["kind"], r["backend"], count(r.get("parameters")),
            optional((r.get("size") or {}).get("mb"), _megabytes),
            _rate(sp["throughput_texts_per_s"]),
            optional((sp.get("latency_ms") or {}).get("p50"), _rate),
            optional(r.get("vs_pipeline"), lambda v: f"{v:.2f}×" if v < 10 else f"{_rate(v)}×"),
            optional(r.get("flop_bound_share"), _share),
            optional(vs.get("agreement"), percent),
            percent_interval(r["accuracy"]), score_interval(r["macro_f1"]),
            FRONTIER_MARK if r.get("pareto") else "",
        ])
    if t := section.get("teacher"):
        rows.append([f"teacher: {t['name']} (reference)", "teacher", DASH,
                     count(t.get("parameters")), DASH,
                     optional(t.get("texts_per_s"), lambda v: f"{_rate(v)} (annotating)"),
                     optional(t.get("seconds_per_text"), lambda v: f"{1000 * v:,.0f} (mean)"),
                     DASH, DASH, DASH, percent_interval(t["accuracy"]),
                     score_interval(t["macro_f1"]), ""])
    return rows, _compare_notes(section)


def _compare_notes(section: dict) -> list[str]:
    ev = (section.get("settings") or {}).get("evaluate") or {}
    hw = section.get("hardware") or {}
    students = {r.get("of") or r["name"] for r in section["rows"]}
    speed = (section["rows"][0]["speed"] if section["rows"] else {})
    notes = [
        f"{len(students)} student{'s' if len(students) != 1 else ''} trained on this run's "
        "annotations (the run's train/validation split and anchor), measured on the same "
        f"{section['n']} gold test texts; every interval uses the same "
        f"{ev.get('bootstrap', '?')} bootstrap resamples.",
        f"Speed on this machine ({hw.get('cpu', '?')}, {hw.get('cores', '?')} cores, "
        f"{hw.get('torch_threads', '?')} torch threads): texts/s at batch "
        f"{speed.get('batch', '?')} (median of 3 passes over {speed.get('n_texts', '?')} test "
        f"texts), and the p50 latency of one text at a time "
        f"({speed.get('latency_samples', '?')} samples).",
    ]
    if b := section.get("baseline"):
        bs = b["speed"]
        notes.append(f"× pipeline: texts/s over `transformers.pipeline(\"text-classification\")` "
                     f"on {b['student']}, timed the same way in the same run: "
                     f"{_rate(bs['throughput_texts_per_s'])} texts/s, p50 "
                     f"{bs['latency_ms']['p50']:,.1f} ms.")
    if hw.get("peak_gflops"):
        notes.append(f"Of the FLOP bound: texts/s over this CPU's fp32 matmul peak "
                     f"({hw['peak_gflops']:,.0f} GFLOP/s, measured in the same run) ÷ FLOPs per "
                     "text (a transformer's 2 × non-embedding parameters × mean tokens; an int8 "
                     "row is held to the same fp32 bound); a dash where a kind has no FLOP "
                     "count.")
    notes.append(f"{FRONTIER_MARK}: the Pareto frontier — no other row is at least as accurate "
                 "and as fast, and better in one: "
                 + (", ".join(section.get("frontier") or []) or DASH) + " (slowest first).")
    if section.get("teacher"):
        notes.append("The teacher's speed is its mean time per text while it annotated; its "
                     "accuracy is on the same gold texts.")
    notes += [f"Not shown: {s['name']}: {s['reason']}." for s in section.get("skipped") or []]
    notes += [f"{r['name']}, {w}" for r in section["rows"] for w in r.get("warnings") or []]
    return notes


def compare_markdown(section: dict, chart: str | None = COMPARE_CHART) -> str:
    """The "Students compared" section of report.md; `chart`: the image file to link."""
    rows, notes = compare_table(section)
    out = [notes[0], _table(COMPARE_HEADER, [[str(c).replace("|", "/") for c in r]
                                             for r in rows])]
    if chart:
        out.append(f"![Accuracy against texts/s of each student, marker area by size on disk; "
                   f"the step line is the Pareto frontier]({chart})")
    out.append("\n".join(f"- {n}" for n in notes[1:]))
    return "\n\n".join(out)


def render_markdown(metrics: dict, chart: str | None = COMPARE_CHART) -> str:
    """report.md: summary, paired test, warnings, per-class, confusion, calibration, speed.

    With a compare result (`metrics["compare"]`) adds "Students compared"; `chart` is the file
    name of its chart beside report.md (None: no image)."""
    if metrics.get("task") == "multi_label":
        return sets.render_sets_markdown(metrics)
    labels, s = metrics["labels"], settings(metrics)
    teacher, student = metrics.get("teacher"), metrics.get("student")
    out = [
        "# llmdistill report",
        f"{metrics['n']} test texts with gold labels; labels: {', '.join(labels)}. Intervals are "
        f"{s['ci']:.0%} percentile-bootstrap intervals over texts "
        f"({resamples(metrics)} resamples).",
        "## Summary",
        _table(["model", "parameters", "accuracy", "macro-F1", "relative size"],
               [list(r.values()) for r in summary_rows(metrics)]),
    ]
    if v := verdict(metrics):
        c = metrics["student_vs_teacher"]
        kappa = DASH if c["kappa"] is None else f"{c['kappa']:.2f}"
        out.append(f"{v} Student and teacher agree on {percent(c['agreement'])} of texts "
                   f"(Cohen's κ = {kappa}).")
    if nok := metrics.get("teacher_not_ok"):
        statuses = "".join(f", {k} {v}" for k, v in nok["by_status"].items())
        out.append(f"Texts without a usable teacher answer: {nok['count']} of {metrics['n']}"
                   f"{statuses} (counted as teacher errors, never dropped).")
    if section := metrics.get("teachers"):
        out += ["## Teachers and the label model", teachers_markdown(section)]
    out += ["## Warnings", "\n".join(f"- {w}" for w in metrics["warnings"]) or "None."]
    out.append("## Per class")
    for who, m in (("Teacher", teacher), ("Student", student)):
        if m:
            out += [f"### {who} vs gold", _per_class(m)]
    out.append("## Confusion matrices" if len(labels) <= MAX_MATRIX else
               "## Top confusions (most frequent errors)")
    for who, m in (("teacher", teacher), ("student", student)):
        if m:
            out += [f"### {who.capitalize()} vs gold", _vs_gold(m, labels, who)]
    if (c := metrics.get("student_vs_teacher")) and len(labels) <= MAX_MATRIX:
        out += ["### Student vs teacher", _confusion(c["confusion"], c["confusion_labels"],
                                                     c["confusion_labels"],
                                                     "student ↓ / teacher →")]
    calibrated = [(who, m) for who, m in (("teacher", teacher), ("student", student))
                  if m and m.get("mean_confidence") is not None]
    if calibrated:
        out += ["## Calibration",
                f"Expected calibration error over {s['ece_bins']} equal-width bins of "
                "top-class confidence (0 is perfect; texts without probabilities left out).",
                _table(["model", "ECE", "mean confidence", "accuracy", "texts"],
                       [[who, f"{m['ece']:.3f}", f"{m['mean_confidence']:.3f}",
                         f"{m['accuracy']['value']:.3f}", m["calibrated_n"]]
                        for who, m in calibrated])]
    rows, hardware = _speed_rows(metrics)
    if rows:
        out += ["## Speed and size",
                _table(["model", "parameters", "size on disk", "throughput (texts/s)",
                        "latency p50 / p90 / p99 (ms, batch 1)"], rows)]
        out += ["Measured on:\n" + "\n".join(f"- {h}" for h in hardware)] if hardware else []
    if line := cost_line(metrics):
        out += ["## Cost", line]
    if (section := metrics.get("compare")) and section.get("rows"):
        out += ["## Students compared", compare_markdown(section, chart)]
    if cascade := metrics.get("cascade"):
        out += ["## Cascade: the student first, the teacher when unsure",
                "If the student answered only texts whose top probability is at least the "
                "threshold and the teacher answered the rest (`llmdistill serve "
                "--cascade-teacher`), on these gold texts:",
                cascade_markdown(cascade["curve"])]
    if manifest := metrics.get("info", {}).get("manifest"):
        out += ["## Manifest", "```json\n" + json.dumps(clean(manifest), indent=2) + "\n```"]
    return "\n\n".join(out) + "\n"


def print_summary(metrics: dict, console: Console | None = None) -> None:
    """The summary table, the verdict and the warnings (in yellow) on the terminal."""
    console = console or Console()
    multi = metrics.get("task") == "multi_label"
    rows = sets.summary_rows(metrics) if multi else summary_rows(metrics)
    table = Table(title=f"student vs teacher vs gold ({metrics['n']} texts)")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*r.values())
    console.print(table)
    if v := (sets.verdict(metrics) if multi else verdict(metrics)):
        console.print(v)
    for w in metrics["warnings"]:
        console.print(f"warning: {w}", style="yellow", markup=False)


def write_compare_chart(metrics: dict, out_dir: Path) -> Path | None:
    """Write COMPARE_CHART beside report.md when the metrics hold a compare result; None when
    they do not, or when matplotlib (the `report` extra) is missing."""
    section = metrics.get("compare")
    if not section or not section.get("rows"):
        return None
    try:
        from llmdistill.report import plots
    except UsageError:
        return None
    teacher = section.get("teacher") or {}
    chart = plots.compare_chart(section["rows"], (teacher.get("accuracy") or {}).get("value"))
    return atomic_write(Path(out_dir) / COMPARE_CHART, plots.svg_bytes(chart))


def write_report(metrics: dict, out_dir: Path) -> dict[str, Path]:
    """Write metrics.json and report.md into `out_dir`, each atomically (and the compare chart,
    with a compare result); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = clean(metrics)
    chart = write_compare_chart(safe, out_dir)
    texts = {"metrics": json.dumps(safe, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
             "report": render_markdown(safe, chart.name if chart else None)}
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md"}
    for key, path in paths.items():
        atomic_write(path, texts[key])
    return paths
