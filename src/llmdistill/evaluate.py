"""Honest numbers: bootstrap intervals, a paired test, collapse checks, calibration, speed, size.

Everything here is pure metrics on label strings and probability arrays; nothing loads a model
(`measure_speed` times a function it is given). A prediction that is not in the label set (the
teacher gave no usable answer) is an error, never a dropped row.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from llmdistill.config import EvaluateConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.tasks import get_task

NO_ANSWER = "(no answer)"
_DEFAULTS = EvaluateConfig()  # the keyword defaults below are config.py's, not copies
# the tfidf student's vocabularies are part of its weights
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".onnx", ".vocab.json")


def _interval(value: float, boots: np.ndarray, ci: float) -> dict:
    low, high = np.quantile(boots, [(1 - ci) / 2, (1 + ci) / 2])
    return {"value": float(value), "low": float(low), "high": float(high)}


def _resample_weights(n: int, n_boot: int, seed: int):
    """Yield (m, n) matrices: how often each row is drawn in each of m bootstrap resamples."""
    rng = np.random.default_rng(seed)
    step = max(1, 4_000_000 // n)  # bounds memory for large n
    for start in range(0, n_boot, step):
        m = min(step, n_boot - start)
        idx = rng.integers(0, n, (m, n)) + n * np.arange(m)[:, None]
        yield np.bincount(idx.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)


def _bootstrap(gold: np.ndarray, pred: np.ndarray, labels: list[str], n_boot: int, seed: int):
    """Accuracy and macro-F1 of every resample, from per-row indicators (one matmul each)."""
    g = (gold[:, None] == np.array(labels)[None, :]).astype(np.float64)
    p = (pred[:, None] == np.array(labels)[None, :]).astype(np.float64)
    rows = np.hstack([(gold == pred)[:, None], g, p, g * p])
    L, n = len(labels), len(gold)
    accs, f1s = [], []
    for w in _resample_weights(n, n_boot, seed):
        s = w @ rows
        g_n, p_n, tp = s[:, 1 : 1 + L], s[:, 1 + L : 1 + 2 * L], s[:, 1 + 2 * L :]
        denom = g_n + p_n  # F1 = 2tp / (2tp + fp + fn); 0 when a class is absent (as sklearn)
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        accs.append(s[:, 0] / n)
        f1s.append(f1.mean(axis=1))
    return np.concatenate(accs), np.concatenate(f1s)


def _as_pred(pred: Sequence, labels: list[str]) -> np.ndarray:
    """Predictions as strings; anything outside the label set becomes NO_ANSWER."""
    allowed = set(labels)
    return np.array([p if p in allowed else NO_ANSWER for p in pred], dtype=object)


def calibration(probs: np.ndarray, gold: np.ndarray, labels: list[str],
                bins: int = _DEFAULTS.ece_bins) -> dict:
    """ECE over equal-width bins of top-class confidence; rows with NaN probabilities skipped."""
    ok = ~np.isnan(probs).any(axis=1)
    probs, gold = probs[ok], gold[ok]
    conf = probs.max(axis=1)
    correct = np.array(labels, dtype=object)[probs.argmax(axis=1)] == gold
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    reliability, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            acc, c = float(correct[m].mean()), float(conf[m].mean())
            ece += m.sum() / len(conf) * abs(acc - c)
            reliability.append({"low": b / bins, "high": (b + 1) / bins, "count": int(m.sum()),
                                "confidence": c, "accuracy": acc})
    return {"ece": float(ece), "mean_confidence": float(conf.mean()) if len(conf) else None,
            "calibrated_n": int(ok.sum()), "reliability": reliability}


def classification_metrics(
    gold: Sequence[str],
    pred: Sequence[str | None],
    labels: list[str],
    probs: np.ndarray | None = None,
    n_boot: int = _DEFAULTS.bootstrap,
    ci: float = _DEFAULTS.ci,
    seed: int = _DEFAULTS.seed,
    ece_bins: int = _DEFAULTS.ece_bins,
) -> dict:
    """Accuracy and macro-F1 with percentile-bootstrap intervals, per-class scores, confusion.

    A prediction outside `labels` (None for no answer) counts as wrong; `unanswered` counts them
    and `unanswered_by_gold` says which gold classes they fell on (the confusion's extra column).
    With `probs` (n × len(labels), label order) adds ECE, mean confidence and reliability bins.
    """
    gold_a, pred_a = np.array(gold, dtype=object), _as_pred(pred, labels)
    n = len(gold_a)
    if n == 0 or len(pred_a) != n:
        raise DataError(f"need as many predictions as gold labels (got {len(pred_a)} and {n})")
    accs, f1s = _bootstrap(gold_a, pred_a, labels, n_boot, seed)
    prec, rec, f1, support = precision_recall_fscore_support(
        gold_a, pred_a, labels=labels, zero_division=0
    )
    per_class = {
        lab: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
              "support": int(support[i]), "predicted_share": float(np.mean(pred_a == lab)),
              "gold_share": float(support[i] / n)}
        for i, lab in enumerate(labels)
    }
    out = {
        "n": n,
        "accuracy": _interval(np.mean(gold_a == pred_a), accs, ci),
        "macro_f1": _interval(
            f1_score(gold_a, pred_a, labels=labels, average="macro", zero_division=0), f1s, ci
        ),
        "per_class": per_class,
        "confusion": confusion_matrix(gold_a, pred_a, labels=labels).tolist(),
        "unanswered": int(np.sum(pred_a == NO_ANSWER)),
        "unanswered_by_gold": [int(np.sum((pred_a == NO_ANSWER) & (gold_a == lab)))
                               for lab in labels],
    }
    if probs is not None:
        out.update(calibration(np.asarray(probs, dtype=np.float64), gold_a, labels, ece_bins))
    return out


def compare(
    a_pred: Sequence[str | None],
    b_pred: Sequence[str | None],
    gold: Sequence[str],
    labels: list[str],
    n_boot: int = _DEFAULTS.bootstrap,
    ci: float = _DEFAULTS.ci,
    seed: int = _DEFAULTS.seed,
    alpha: float = _DEFAULTS.significance,
) -> dict:
    """Paired comparison of two models on the same texts.

    McNemar's exact test on the discordant pairs (b: only A right, c: only B right), the paired
    bootstrap interval of accuracy(A) − accuracy(B), Cohen's kappa and the raw agreement rate.
    `confusion` has rows A, columns B over `confusion_labels` (NO_ANSWER added when present).
    """
    a, b_, g = _as_pred(a_pred, labels), _as_pred(b_pred, labels), np.array(gold, dtype=object)
    a_ok, b_ok = a == g, b_ == g
    b, c = int(np.sum(a_ok & ~b_ok)), int(np.sum(~a_ok & b_ok))
    p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    verdict = "no significant difference" if p >= alpha else ("a_better" if b > c else "b_better")
    diff = a_ok.astype(np.float64) - b_ok
    boots = np.concatenate([w @ diff / len(g) for w in _resample_weights(len(g), n_boot, seed)])
    used = labels + ([NO_ANSWER] if NO_ANSWER in set(a) | set(b_) else [])
    agree = a == b_
    kappa = cohen_kappa_score(a, b_, labels=used)
    return {
        "n": len(g),
        "b": b,
        "c": c,
        "p_value": float(p),
        "alpha": alpha,
        "verdict": verdict,
        "accuracy_difference": _interval(diff.mean(), boots, ci),
        "kappa": None if np.isnan(kappa) else float(kappa),  # undefined if both are constant
        "agreement": float(np.mean(agree & (a != NO_ANSWER))),
        "confusion_labels": used,
        "confusion": confusion_matrix(a, b_, labels=used).tolist(),
    }


def collapse_warnings(
    pred: Sequence[str | None], gold: Sequence[str], labels: list[str], ratio: float
) -> list[str]:
    """One sentence per class predicted for fewer than `ratio` × its share of the gold labels."""
    p, g = _as_pred(pred, labels), np.array(gold, dtype=object)
    out = []
    for lab in labels:
        p_share, g_share = np.mean(p == lab), np.mean(g == lab)
        if g_share > 0 and p_share < ratio * g_share:
            recall = np.mean(p[g == lab] == lab)
            out.append(f"{lab}: predicted for {p_share:.0%} of texts but {g_share:.0%} of gold "
                       f"(recall {recall:.2f}) — the class is collapsing")
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """What a speed number was measured on."""
    import torch  # only here: the rest of the module must stay light

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}


def measure_speed(
    predict_proba: Callable[[list[str], int], np.ndarray],
    texts: list[str],
    batch: int = _DEFAULTS.speed_batch,
    latency_samples: int = _DEFAULTS.latency_samples,
) -> dict:
    """Throughput at `batch` (median of 3 passes after a warm-up); latency at batch 1 in ms."""
    if not texts:
        raise UsageError("measure_speed needs at least one text")
    predict_proba(texts[:batch], batch)  # warm-up
    passes = []
    for _ in range(3):
        t0 = time.perf_counter()
        predict_proba(texts, batch)
        passes.append(len(texts) / max(time.perf_counter() - t0, 1e-9))
    lat = []
    for text in (texts * (latency_samples // len(texts) + 1))[:latency_samples]:
        t0 = time.perf_counter()
        predict_proba([text], 1)
        lat.append((time.perf_counter() - t0) * 1000)
    p50, p90, p99 = (float(x) for x in np.percentile(lat, [50, 90, 99]))
    return {"throughput_texts_per_s": float(np.median(passes)), "batch": batch,
            "n_texts": len(texts), "latency_ms": {"p50": p50, "p90": p90, "p99": p99},
            "latency_samples": len(lat), "hardware": hardware()}


def model_size(path: Path) -> dict:
    """Bytes on disk of the weight files in folder `path` (or of `path` itself if it is a file).

    Only the folder's top level: a student's `onnx/` exports are other copies of the same model.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist: cannot measure the model's size")
    files = [path] if path.is_file() else sorted(
        f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)
    )
    size = sum(f.stat().st_size for f in files)
    return {"bytes": size, "mb": size / 1e6, "files": len(files)}


def _teacher_columns(gold_df: pd.DataFrame, teacher_df: pd.DataFrame, labels: list[str]):
    """Teacher labels, probabilities and statuses aligned to gold rows; missing rows → 'missing'."""
    if teacher_df["id"].duplicated().any():
        raise DataError("teacher annotations repeat an id: one row per text is needed")
    t = gold_df[["id"]].merge(teacher_df, on="id", how="left", validate="one_to_one")
    status = t["status"].fillna("missing").astype(str).to_numpy()
    ok = status == "ok"
    pred = [lab if good else None for lab, good in zip(t["label"], ok, strict=True)]
    cols = [f"prob_{lab}" for lab in labels]
    probs = None
    if all(c in t.columns for c in cols):
        probs = t[cols].to_numpy(dtype=np.float64, copy=True)
        probs[~ok] = np.nan
    return pred, probs, status


def evaluate_predictions(
    gold_df: pd.DataFrame,
    teacher_df: pd.DataFrame | None,
    student_probs: np.ndarray | None,
    labels: list[str],
    cfg: EvaluateConfig,
    info: dict,
) -> dict:
    """Student, teacher, majority baseline and gold on the same texts, with warnings.

    `teacher_df` (id, status, label, prob_<label>…) is aligned to `gold_df` by id; a row whose
    status is not "ok", or that is missing, is wrong for the teacher and counted in
    `teacher_not_ok`. `student_probs` follows `gold_df`'s rows and the label order. `info` is
    passed through untouched; the report reads, each optional:
    {"teacher"|"student": {"name", "parameters", "size": model_size(…),
    "speed": measure_speed(…) or {"seconds_per_text"}}, "manifest": {…}}.
    """
    gold = gold_df["label"].astype(object).to_numpy()
    if bad := sorted(set(gold) - set(labels), key=str):
        raise DataError(f"gold labels {bad} are not in the label set {labels}")
    kw = {"n_boot": cfg.bootstrap, "ci": cfg.ci, "seed": cfg.seed}
    counts = {lab: int(np.sum(gold == lab)) for lab in labels}
    majority = max(labels, key=counts.__getitem__)
    out: dict = {
        "n": len(gold),
        "labels": list(labels),
        "gold": {"counts": counts, "shares": {k: v / len(gold) for k, v in counts.items()}},
        "majority": {"label": majority,
                     **classification_metrics(gold, [majority] * len(gold), labels, **kw)},
        "teacher": None,
        "student": None,
        "student_vs_teacher": None,
        "teacher_not_ok": None,
        "warnings": [],
        "settings": cfg.model_dump(),
        "info": info,
    }
    preds = {}
    if teacher_df is not None:
        preds["teacher"], t_probs, status = _teacher_columns(gold_df, teacher_df, labels)
        out["teacher"] = classification_metrics(gold, preds["teacher"], labels, t_probs,
                                                ece_bins=cfg.ece_bins, **kw)
        bad_status = pd.Series(status[status != "ok"]).value_counts()
        out["teacher_not_ok"] = {"count": int(bad_status.sum()),
                                 "by_status": {k: int(v) for k, v in bad_status.items()}}
        if len(bad_status):
            out["warnings"].append(
                f"teacher: {int(bad_status.sum())} of {len(gold)} texts got no usable answer "
                f"({', '.join(f'{k} {v}' for k, v in bad_status.items())}); they count as errors"
            )
    if student_probs is not None:
        student_probs = np.asarray(student_probs, dtype=np.float64)
        if student_probs.shape != (len(gold), len(labels)):
            raise DataError(f"student probabilities have shape {student_probs.shape}, "
                            f"expected {(len(gold), len(labels))}")
        preds["student"] = list(np.array(labels, dtype=object)[student_probs.argmax(axis=1)])
        out["student"] = classification_metrics(gold, preds["student"], labels, student_probs,
                                                ece_bins=cfg.ece_bins, **kw)
    if len(preds) == 2:
        out["student_vs_teacher"] = {"a_model": "student", "b_model": "teacher", **compare(
            preds["student"], preds["teacher"], gold, labels, alpha=cfg.significance, **kw)}
    for who, pred in preds.items():
        out["warnings"] += [f"{who}, {w}" for w in
                            collapse_warnings(pred, gold, labels, cfg.collapse_ratio)]
    return out


def teacher_breakdown(gold_df: pd.DataFrame, teacher_df: pd.DataFrame, student_probs: np.ndarray,
                      labels: list[str], cfg: EvaluateConfig, names: list[str],
                      calibrated: list[np.ndarray | None] | None = None) -> list[dict]:
    """Each teacher of a store (its `t{i}_…` columns) against gold and against the student.

    `teacher_df` is aligned to `gold_df` (same ids); `calibrated[i]`, when given, is teacher
    i's probabilities after the label model's calibration, for the ECE after it.
    """
    gold = gold_df["label"].astype(object).to_numpy()
    kw = {"n_boot": cfg.bootstrap, "ci": cfg.ci, "seed": cfg.seed}
    student = list(np.array(labels, dtype=object)[np.asarray(student_probs).argmax(axis=1)])
    rows = []
    for i, name in enumerate(names):
        one = pd.DataFrame({"id": teacher_df["id"], "status": teacher_df[f"t{i}_status"],
                            "label": teacher_df[f"t{i}_label"],
                            **{f"prob_{lab}": teacher_df[f"t{i}_prob_{lab}"] for lab in labels}})
        pred, probs, status = _teacher_columns(gold_df, one, labels)
        m = classification_metrics(gold, pred, labels, probs, ece_bins=cfg.ece_bins, **kw)
        row = {"name": name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
               "ece": m.get("ece"), "not_ok": int((status != "ok").sum()),
               "student_vs": compare(student, pred, gold, labels, alpha=cfg.significance, **kw)}
        if calibrated is not None and calibrated[i] is not None:
            row["ece_calibrated"] = calibration(calibrated[i], gold, labels, cfg.ece_bins)["ece"]
        rows.append(row)
    return rows


# --- multi-label (tasks/multi_label.py): label sets as (n, k) bool matrices -------------------

def _set_rows(gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-row counts whose resampled sums give every multi-label metric: exact match, mismatched
    labels, then per label tp, fp, fn, gold count and predicted count."""
    tp, fp, fn = gold & pred, ~gold & pred, gold & ~pred
    return np.hstack([np.all(gold == pred, axis=1)[:, None], (gold != pred).sum(1)[:, None],
                      tp, fp, fn, gold, pred]).astype(np.float64)


def _set_scores(s: np.ndarray, n: float, k: int) -> dict[str, np.ndarray]:
    """Subset accuracy, Hamming loss, micro-F1 and macro-F1 from summed `_set_rows` (m, cols)."""
    tp, fp, fn = s[:, 2:2 + k], s[:, 2 + k:2 + 2 * k], s[:, 2 + 2 * k:2 + 3 * k]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    t, d = tp.sum(1), denom.sum(1)
    return {"subset_accuracy": s[:, 0] / n, "hamming_loss": s[:, 1] / (n * k),
            "micro_f1": np.divide(2 * t, d, out=np.zeros_like(t), where=d > 0),
            "macro_f1": f1.mean(1)}


def set_metrics(
    gold: np.ndarray,
    pred: np.ndarray,
    labels: list[str],
    probs: np.ndarray | None = None,
    n_boot: int = _DEFAULTS.bootstrap,
    ci: float = _DEFAULTS.ci,
    seed: int = _DEFAULTS.seed,
    ece_bins: int = _DEFAULTS.ece_bins,
) -> dict:
    """Multi-label metrics with percentile-bootstrap intervals (rows resampled): micro/macro-F1,
    subset accuracy (exact set), Hamming loss, per-label precision/recall/F1, label cardinality.

    `gold` and `pred` are (n, k) bool; with `probs` (n, k, per-label probabilities) adds the ECE
    of every (text, label) probability against whether the label applies.
    """
    gold, pred = np.asarray(gold, dtype=bool), np.asarray(pred, dtype=bool)
    n, k = gold.shape
    if n == 0 or pred.shape != gold.shape:
        raise DataError(f"need as many label sets as gold ones (got {pred.shape} and "
                        f"{gold.shape})")
    rows = _set_rows(gold, pred)
    point = {m: float(v[0]) for m, v in _set_scores(rows.sum(0)[None, :], n, k).items()}
    boots = [_set_scores(w @ rows, n, k) for w in _resample_weights(n, n_boot, seed)]
    out: dict = {"n": n}
    for m in point:
        out[m] = _interval(point[m], np.concatenate([b[m] for b in boots]), ci)
    tp, fp, fn = (gold & pred).sum(0), (~gold & pred).sum(0), (gold & ~pred).sum(0)
    out["per_label"] = {
        lab: {"precision": float(tp[j] / max(tp[j] + fp[j], 1)),
              "recall": float(tp[j] / max(tp[j] + fn[j], 1)),
              "f1": float(2 * tp[j] / max(2 * tp[j] + fp[j] + fn[j], 1)),
              "support": int(gold[:, j].sum()), "predicted": int(pred[:, j].sum())}
        for j, lab in enumerate(labels)}
    out["cardinality"] = {"gold": float(gold.sum(1).mean()), "predicted": float(pred.sum(1).mean()),
                          "empty_predictions": int((pred.sum(1) == 0).sum())}
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        ok = ~np.isnan(p).any(axis=1)
        binary = calibration_binary(p[ok].ravel(), gold[ok].ravel(), ece_bins)
        out.update(binary)
    return out


def calibration_binary(p: np.ndarray, truth: np.ndarray, bins: int = _DEFAULTS.ece_bins) -> dict:
    """ECE of independent probabilities `p` that an event (`truth`) happens: equal-width bins."""
    which = np.clip(np.ceil(p * bins).astype(int) - 1, 0, bins - 1)
    ece, reliability = 0.0, []
    for b in range(bins):
        m = which == b
        if m.any():
            acc, c = float(truth[m].mean()), float(p[m].mean())
            ece += m.sum() / len(p) * abs(acc - c)
            reliability.append({"low": b / bins, "high": (b + 1) / bins, "count": int(m.sum()),
                                "confidence": c, "accuracy": acc})
    return {"ece": float(ece), "calibrated_n": int(len(p)), "reliability": reliability}


def compare_sets(
    a: np.ndarray,
    b: np.ndarray,
    gold: np.ndarray,
    n_boot: int = _DEFAULTS.bootstrap,
    ci: float = _DEFAULTS.ci,
    seed: int = _DEFAULTS.seed,
    alpha: float = _DEFAULTS.significance,
) -> dict:
    """Paired comparison of two multi-label models on the same texts: McNemar's exact test on
    exact-set correctness, the paired bootstrap interval of micro-F1(A) − micro-F1(B), the share
    of texts given the same set, and A's micro-F1 against B (agreement beyond exact sets)."""
    a, b, gold = (np.asarray(x, dtype=bool) for x in (a, b, gold))
    n, k = gold.shape
    a_ok, b_ok = np.all(a == gold, 1), np.all(b == gold, 1)
    nb, nc = int(np.sum(a_ok & ~b_ok)), int(np.sum(~a_ok & b_ok))
    p = binomtest(nb, nb + nc, 0.5).pvalue if nb + nc else 1.0
    verdict = "no significant difference" if p >= alpha else ("a_better" if nb > nc else "b_better")
    ra, rb = _set_rows(gold, a), _set_rows(gold, b)
    diff = []
    for w in _resample_weights(n, n_boot, seed):
        diff.append(_set_scores(w @ ra, n, k)["micro_f1"] - _set_scores(w @ rb, n, k)["micro_f1"])
    point = (_set_scores(ra.sum(0)[None, :], n, k)["micro_f1"]
             - _set_scores(rb.sum(0)[None, :], n, k)["micro_f1"])[0]
    vs = _set_scores(_set_rows(b, a).sum(0)[None, :], n, k)
    return {"n": n, "b": nb, "c": nc, "p_value": float(p), "alpha": alpha, "verdict": verdict,
            "micro_f1_difference": _interval(point, np.concatenate(diff), ci),
            "agreement": float(np.mean(np.all(a == b, 1))),
            "micro_f1_vs": float(vs["micro_f1"][0])}


def cardinality_warnings(pred: np.ndarray, gold: np.ndarray, labels: list[str],
                         ratio: float) -> list[str]:
    """The multi-label analogue of class collapse: too few labels per text overall, or a label
    predicted for fewer than `ratio` × its gold share of the texts."""
    pred, gold = np.asarray(pred, dtype=bool), np.asarray(gold, dtype=bool)
    out = []
    pc, gc = pred.sum(1).mean(), gold.sum(1).mean()
    if gc > 0 and pc < ratio * gc:
        out.append(f"{pc:.2f} labels per text predicted against {gc:.2f} in gold — the label "
                   "sets are collapsing (lower the thresholds or check the teacher)")
    for j, lab in enumerate(labels):
        p_share, g_share = pred[:, j].mean(), gold[:, j].mean()
        if g_share > 0 and p_share < ratio * g_share:
            recall = pred[gold[:, j], j].mean()
            out.append(f"{lab}: predicted for {p_share:.0%} of texts but {g_share:.0%} of gold "
                       f"(recall {recall:.2f}) — the label is collapsing")
    return out


def evaluate_sets(
    gold_df: pd.DataFrame,
    teacher_df: pd.DataFrame | None,
    student_probs: np.ndarray | None,
    labels: list[str],
    cfg: EvaluateConfig,
    info: dict,
    thresholds: Sequence[float] | None = None,
) -> dict:
    """`evaluate_predictions` for a multi-label task: gold, teacher and student label sets on the
    same texts. The teacher's set is its store label (each label at ≥ 0.5); a text it gave no
    usable answer counts as the empty set (every gold label missed) and is counted in
    `teacher_not_ok`. The student's set applies its per-label `thresholds`. The baseline is the
    most frequent gold label set."""
    task = get_task("multi_label")
    gold_s = gold_df["label"].astype(str).tolist()
    unknown = sorted({lab for g in gold_s for lab in task.split(g)} - set(labels))
    if unknown:
        raise DataError(f"gold labels {unknown[:5]} are not in the label set {labels}")
    gold = task.targets(gold_s, labels) > 0.5
    kw = {"n_boot": cfg.bootstrap, "ci": cfg.ci, "seed": cfg.seed}
    common = pd.Series(gold_s).value_counts().index[0]
    out: dict = {
        "task": task.name,
        "n": len(gold_s),
        "labels": list(labels),
        "gold": {"counts": {lab: int(gold[:, j].sum()) for j, lab in enumerate(labels)},
                 "shares": {lab: float(gold[:, j].mean()) for j, lab in enumerate(labels)},
                 "cardinality": float(gold.sum(1).mean())},
        "majority": {"label": common, **set_metrics(
            gold, np.repeat(task.targets([common], labels) > 0.5, len(gold_s), 0), labels, **kw)},
        "teacher": None, "student": None, "student_vs_teacher": None, "teacher_not_ok": None,
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "warnings": [], "settings": cfg.model_dump(), "info": info,
    }
    sets = {}
    if teacher_df is not None:
        pred, t_probs, status = _teacher_columns(gold_df, teacher_df, labels)
        sets["teacher"] = task.targets([p if p is not None else "" for p in pred], labels) > 0.5
        out["teacher"] = set_metrics(gold, sets["teacher"], labels, t_probs,
                                     ece_bins=cfg.ece_bins, **kw)
        bad_status = pd.Series(status[status != "ok"]).value_counts()
        out["teacher_not_ok"] = {"count": int(bad_status.sum()),
                                 "by_status": {k: int(v) for k, v in bad_status.items()}}
        if len(bad_status):
            out["warnings"].append(
                f"teacher: {int(bad_status.sum())} of {len(gold_s)} texts got no usable answer "
                f"({', '.join(f'{k} {v}' for k, v in bad_status.items())}); they count as empty "
                "label sets")
    if student_probs is not None:
        student_probs = np.asarray(student_probs, dtype=np.float64)
        if student_probs.shape != gold.shape:
            raise DataError(f"student probabilities have shape {student_probs.shape}, "
                            f"expected {gold.shape}")
        sets["student"] = task.decide_matrix(student_probs, thresholds)
        out["student"] = set_metrics(gold, sets["student"], labels, student_probs,
                                     ece_bins=cfg.ece_bins, **kw)
    if len(sets) == 2:
        out["student_vs_teacher"] = {"a_model": "student", "b_model": "teacher", **compare_sets(
            sets["student"], sets["teacher"], gold, alpha=cfg.significance, **kw)}
    for who, pred in sets.items():
        out["warnings"] += [f"{who}, {w}" for w in
                            cardinality_warnings(pred, gold, labels, cfg.collapse_ratio)]
    return out
