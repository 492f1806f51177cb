"""The report's charts: matplotlib figures rendered to SVG, as data: URIs with a width.

One palette gives each model the same colour in every chart (and in the HTML around them).
Figures are built with the object API (no pyplot, no global figure state) and text is drawn as
paths, so a chart looks the same in every browser and needs no font; data text (labels, model
names) is escaped so that it is never parsed as mathtext. Each chart is its own small figure, so
the page can lay them side by side on a laptop and one under another on a phone.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from llmdistill.errors import UsageError

try:
    import matplotlib as mpl
    from matplotlib.colors import LinearSegmentedColormap, to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
except ImportError as e:  # an optional extra: say how to get it
    raise UsageError("report.html needs matplotlib: pip install 'llmdistill[report]'") from e

PALETTE = {  # Okabe–Ito: distinguishable with the common colour-vision deficiencies
    "teacher": "#0072B2",
    "student": "#D55E00",
    "gold": "#444444",
    "student_vs_teacher": "#6E6E6E",
}
MODELS = ("teacher", "student")
ZOOM = 1.15  # CSS pixels per figure pixel: 10 pt chart text shows at about 15 px, as the page
RC = {
    "svg.fonttype": "path",
    "svg.hashsalt": "llmdistill",  # stable ids: the same metrics give the same bytes
    "font.size": 10,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def _style() -> AbstractContextManager:
    return mpl.rc_context(RC)


@dataclass(frozen=True)
class Chart:
    """An SVG data: URI and the width in CSS pixels to show it at.

    Every chart is shown at the same scale of its size in inches (ZOOM), so text has one size
    across charts whatever their shape; CSS only shrinks a chart wider than the screen.
    """

    uri: str
    width: int


def _chart(fig: Figure) -> Chart:
    """The figure as an SVG data: URI (no date in the metadata, so output is reproducible)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    uri = "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Chart(uri, round(fig.get_figwidth() * 96 * ZOOM))


def _text(s: object) -> str:
    """Data as literal text: a label like "$5 refund" must not switch on mathtext."""
    return str(s).replace("$", r"\$")


def _wrap(label: object, width: int = 12) -> str:
    return _text(textwrap.fill(str(label), width, break_long_words=True) or " ")


def _number(v: float) -> str:
    """A value for a bar or an axis: 1,063 not 1.06e+03; three significant digits below 100."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _ramp(colour: str) -> LinearSegmentedColormap:
    """White to `colour`: how a model's confusion matrix is shaded."""
    return LinearSegmentedColormap.from_list(colour, ["#FFFFFF", colour])


def confusion_chart(matrix: Sequence[Sequence[int]], rows: Sequence[str], cols: Sequence[str],
                    row_title: str, col_title: str, colour: str) -> Chart:
    """Counts with each row's share; shaded by the row share so rare classes stay visible."""
    m = np.asarray(matrix, dtype=float)
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    n_rows, n_cols = m.shape
    k = max(n_rows, n_cols)
    cell_font = 10 if k <= 4 else max(6, 10 - 0.5 * (k - 4))
    with _style():
        fig = Figure(figsize=(max(2.9, 0.62 * k + 1.2), max(2.7, 0.62 * k + 1.0)),
                     layout="constrained")
        ax = fig.subplots()
        ax.imshow(share, cmap=_ramp(colour), vmin=0, vmax=1, aspect="equal")
        rgb = np.array(to_rgb(colour))
        for i in range(n_rows):
            for j in range(n_cols):
                # white text where the shading is dark enough to need it
                shade = 1 - share[i, j] * (1 - rgb)
                dark = float(shade @ [0.299, 0.587, 0.114]) < 0.55
                ax.text(j, i, f"{int(m[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                        fontsize=cell_font, color="white" if dark else "#222222")
        ax.set_xticks(range(n_cols), [_wrap(c, 10) for c in cols], fontsize=cell_font - 1)
        ax.set_yticks(range(n_rows), [_wrap(r, 10) for r in rows], fontsize=cell_font - 1)
        ax.set_xlabel(col_title)
        ax.set_ylabel(row_title)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        return _chart(fig)


def per_class_chart(scores: dict[str, dict[str, dict]], labels: Sequence[str], metric: str,
                    collapsed: dict[str, set[str]]) -> Chart:
    """Grouped bars of one per-class score (precision or recall) for each model.

    `scores` maps model → per_class metrics; bars of a class that model collapses on (see
    `collapsed`) are hatched, and the legend says what the hatching means.
    """
    models = [w for w in MODELS if w in scores]
    x = np.arange(len(labels))
    width = 0.8 / max(len(models), 1)
    show_values = len(labels) * len(models) <= 12
    with _style():
        fig = Figure(figsize=(max(3.6, 0.75 * len(labels) + 1.4), 3.0), layout="constrained")
        ax = fig.subplots()
        for k, who in enumerate(models):
            values = [scores[who][lab][metric] for lab in labels]
            bars = ax.bar(x + (k - (len(models) - 1) / 2) * width, values, width * 0.92,
                          color=PALETTE[who], label=who, edgecolor=PALETTE[who])
            for bar, lab in zip(bars, labels, strict=True):
                if lab in collapsed.get(who, set()):
                    bar.set_facecolor("white")
                    bar.set_hatch("////")
            if show_values:
                ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2, fontsize=8)
        handles = [Patch(color=PALETTE[w], label=w) for w in models]
        if any(collapsed.get(w) for w in models):
            handles.append(Patch(facecolor="white", edgecolor="#444444", hatch="////",
                                 label="collapsed"))
        ax.set_xticks(x, [_wrap(lab) for lab in labels])
        ax.set_ylim(0, 1.2)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel(metric)
        ax.set_xlabel("gold class")
        ax.legend(handles=handles, loc="upper left", ncols=len(handles), fontsize=8.5,
                  handlelength=1.2, columnspacing=0.9, borderaxespad=0.1)
        return _chart(fig)


def reliability_chart(reliability: Sequence[dict], who: str, ece: float) -> Chart:
    """Accuracy against mean confidence per bin over the diagonal, and how full each bin is."""
    colour = PALETTE[who]
    with _style():
        fig = Figure(figsize=(3.3, 3.5), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        top.plot([0, 1], [0, 1], ls="--", lw=1, color=PALETTE["gold"], label="calibrated")
        lows = [b["low"] for b in reliability]
        widths = [b["high"] - b["low"] for b in reliability]
        top.bar(lows, [b["accuracy"] for b in reliability], widths, align="edge",
                color=colour, alpha=0.35, edgecolor=colour, linewidth=0.6)
        top.plot([b["confidence"] for b in reliability], [b["accuracy"] for b in reliability],
                 "o-", color=colour, ms=3.5, lw=1.2, label=f"{who}, ECE {ece:.3f}")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1.02)
        top.set_ylabel("accuracy in bin")
        top.legend(loc="upper left", fontsize=8.5)
        bottom.bar(lows, [b["count"] for b in reliability], widths, align="edge", color=colour,
                   edgecolor="white", linewidth=0.5)
        bottom.set_ylabel("texts")
        bottom.set_xlabel("confidence (top-class probability)")
        return _chart(fig)


def bar_chart(values: dict[str, float], label: str, unit: str) -> Chart:
    """One horizontal bar per model (teacher above student), the value written at the bar's end.

    The axis is logarithmic when one value is over 20 times the other (a 405B teacher next to a
    100M student), and says so.
    """
    models = [w for w in MODELS if values.get(w)]
    vals = [values[w] for w in models]
    log = max(vals) / min(vals) > 20
    with _style():
        fig = Figure(figsize=(3.3, 0.5 * len(models) + 1.0), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(models))[::-1]
        bars = ax.barh(y, vals, 0.6, color=[PALETTE[w] for w in models])
        ax.bar_label(bars, labels=[f"{_number(v)} {unit}".strip() for v in vals], padding=3,
                     fontsize=9)
        ax.set_yticks(y, models)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(vals) / 3, max(vals) * 40)  # room for the value after the bar
            ax.xaxis.set_major_locator(LogLocator(numticks=5))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_xlim(0, max(vals) * 1.5)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # tick labels never touch
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _number(v)))
        ax.set_ylim(-0.6, len(models) - 0.4)
        ax.set_xlabel(_text(label + (" (log scale)" if log else "")))
        ax.tick_params(axis="y", length=0)
        return _chart(fig)


def cascade_chart(curve: Sequence[dict], teacher_accuracy: float | None,
                  student_accuracy: float) -> Chart:
    """Accuracy of the cascade and the share the student answers, against the threshold.

    The teacher-alone and student-alone accuracies are drawn as dashed lines in their colours,
    so the reader sees where the cascade beats both or buys back the teacher's accuracy.
    """
    x = [r["threshold"] for r in curve]
    with _style():
        fig = Figure(figsize=(4.6, 3.2), layout="constrained")
        ax = fig.subplots()
        ax.plot(x, [100 * r["accuracy"] for r in curve], "o-", color=PALETTE["gold"], ms=3.5,
                lw=1.5, label="cascade accuracy")
        ax.plot(x, [100 * r["coverage"] for r in curve], "s-", color=PALETTE["student"], ms=3,
                lw=1.2, alpha=0.6, label="answered by the student")
        ax.axhline(100 * student_accuracy, ls="--", lw=1, color=PALETTE["student"],
                   label="student alone")
        if teacher_accuracy is not None:
            ax.axhline(100 * teacher_accuracy, ls="--", lw=1, color=PALETTE["teacher"],
                       label="teacher alone")
        ax.set_xlim(min(x) - 0.02, max(x) + 0.02)
        ax.set_ylim(0, 102)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel("threshold on the student's top probability")
        ax.set_ylabel("percent of texts")
        ax.legend(loc="lower left", fontsize=8.5)
        return _chart(fig)


MARKER_AREA = (14.0, 420.0)  # pt²: the smallest drawn marker, and the largest model's
POINT_LABEL = 26  # characters of a student's name written beside its point


def _compact(v: float) -> str:
    """A log-axis tick: 300, 1k, 20k, 1M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:g}{unit}"
    return _number(v)


def compare_chart(rows: Sequence[dict], teacher_accuracy: float | None) -> Chart:
    """Accuracy (with its interval) against texts/s on a log axis, one point per student.

    `rows` are compare.json's: marker area is proportional to megabytes on disk (never below
    a visible minimum), each point is labelled with its name (shortened), and the Pareto
    frontier (`pareto` rows) is a step line: the best accuracy to be had at each speed. Points
    off it are drawn hollow; the teacher's accuracy, when known, is a dashed line.
    """
    from matplotlib.lines import Line2D

    colour = PALETTE["student"]
    x = np.array([r["speed"]["throughput_texts_per_s"] for r in rows], dtype=float)
    acc = np.array([100 * r["accuracy"]["value"] for r in rows])
    low = np.array([100 * r["accuracy"]["low"] for r in rows])
    high = np.array([100 * r["accuracy"]["high"] for r in rows])
    mb = np.array([(r.get("size") or {}).get("mb") or 0.0 for r in rows], dtype=float)
    area = np.maximum(MARKER_AREA[0], MARKER_AREA[1] * mb / max(mb.max(initial=0.0), 1e-9))
    front = np.array([bool(r.get("pareto")) for r in rows])
    with _style():
        fig = Figure(figsize=(5.6, 3.8), layout="constrained")
        ax = fig.subplots()
        ax.errorbar(x, acc, yerr=[acc - low, high - acc], fmt="none", ecolor=colour, elinewidth=1,
                    capsize=3, alpha=0.7)
        order = np.argsort(x[front])
        ax.step(x[front][order], acc[front][order], where="pre", color=PALETTE["gold"], lw=1.3)
        ax.scatter(x[front], acc[front], s=area[front], color=colour, edgecolor=colour, zorder=3)
        ax.scatter(x[~front], acc[~front], s=area[~front], facecolor="white", edgecolor=colour,
                   linewidth=1.2, zorder=3)
        span = np.log(x.max() * 6) - np.log(x.min() / 2)
        for xi, yi, r in zip(x, acc, rows, strict=True):
            name = str(r["name"])
            if len(name) > POINT_LABEL:  # keep both ends: the model and a suffix such as int8
                name = name[: POINT_LABEL - 11] + "…" + name[-10:]
            left = (np.log(xi) - np.log(x.min() / 2)) / span > 0.6  # near the right edge
            label = ax.annotate(_text(name), (xi, yi), xytext=(-6 if left else 6, 5),
                                textcoords="offset points", fontsize=8, color="#222222",
                                ha="right" if left else "left")
            label.set_in_layout(False)  # a long name must not squeeze the axes
        handles = [Line2D([], [], color=PALETTE["gold"], lw=1.3, label="Pareto frontier"),
                   Line2D([], [], ls="", marker="o", ms=6, color=colour, label="on the frontier")]
        if (~front).any():
            handles.append(Line2D([], [], ls="", marker="o", ms=6, markerfacecolor="white",
                                  markeredgecolor=colour, label="dominated"))
        if teacher_accuracy is not None:
            ax.axhline(100 * teacher_accuracy, ls="--", lw=1, color=PALETTE["teacher"])
            handles.append(Line2D([], [], ls="--", lw=1, color=PALETTE["teacher"],
                                  label="teacher"))
        ax.set_xscale("log")
        ax.set_xlim(x.min() / 2, x.max() * 6)  # room for the names right of the points
        ax.xaxis.set_major_locator(LogLocator(numticks=6))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))
        floor = min(low.min(), 100 * teacher_accuracy if teacher_accuracy is not None else 100)
        ax.set_ylim(max(0, floor - 5), min(104, high.max() + 6))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel("texts per second (log scale)")
        ax.set_ylabel("accuracy on gold (%)")
        ax.legend(handles=handles, loc="best", fontsize=8)
        return _chart(fig)


def svg_bytes(chart: Chart) -> bytes:
    """The SVG file behind a chart's data: URI (for report.md, which links a file)."""
    return base64.b64decode(chart.uri.split(",", 1)[1])
