"""Several teachers' answers for the same texts become one soft label per text.

Each teacher gives an (n, k) array of class probabilities in label order (a one-hot row for a
teacher that returns hard labels, such as a replayed 405B's), with an all-NaN row where it gave no
usable answer. A small gold "anchor" (row indices and their gold class ids, ≤ a few hundred
training rows) is what the label model fits on:

1. calibration, per teacher (`fit_calibration`): one temperature, or a temperature and a bias per
   class, fitted by NLL on the anchor rows the teacher answered;
2. aggregation (`aggregate`, `LabelModelConfig.method`): `first`, `mean`, `dawid_skene` (EM with
   one confusion matrix per teacher, started from and clamped to the anchor), `stacked` (logistic
   regression on the teachers' log-probabilities, fitted on the anchor) or `snorkel` (snorkel's
   LabelModel on the teachers' votes).

The anchor rows' own soft labels are never their gold labels: stacked gives them out-of-fold
predictions and dawid_skene its unclamped posterior, so that whatever later compares the labels
with the anchor's gold (the noise estimate, the report) sees teacher-like labels, not copies.

Multi-label (`task="multi_label"`): each teacher gives an independent probability per label (rows
need not sum to 1) and the anchor's gold is an (m, k) 0/1 matrix. Calibration is per label
(`LabelCalibration`: a temperature, or a temperature and a bias, on the label's logit, Platt
style), and only `first` and `mean` aggregate (`MULTI_LABEL_METHODS`); `auto` picks `first`
for one teacher and `mean` for several.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from llmdistill.config import LabelModelConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.evaluate import calibration as _ece_report
from llmdistill.tasks import get_task

# Probabilities are clipped to [EPS, 1] before their log. For a one-hot teacher the value of EPS
# does not matter for the result: its calibrated confidence is 1 / (1 + (k-1) EPS^(1/T)) and the
# fitted T absorbs log EPS, so any EPS reaches the confidence that matches the anchor accuracy.
# What EPS does decide: (a) a soft teacher's probabilities below it are treated as equal (below
# 1e-4 an LLM's class probability carries no usable signal, and top-20 logprob floors sit about
# there), and (b) how far the bounded T search reaches: at T_MAX = 1000, EPS^(1/T) = 0.991, so
# even a one-hot teacher at chance accuracy can be made nearly uniform. 1e-4 satisfies both while
# log EPS = -9.2 stays well inside float64's comfortable range for the optimiser.
EPS = 1e-4
T_MIN, T_MAX = 0.05, 1000.0
# temperature_bias: mean anchor NLL + BIAS_L2 / 2 * |b|^2 / n, i.e. a N(0, 1) prior on each class
# bias in nats. It pins the softmax's free constant (the bias sums to ~0) and keeps a 200-row
# anchor from fitting a large bias to a class it saw a handful of times.
BIAS_L2 = 1.0
# fewer anchor rows than this for a teacher: its calibration is skipped (the info says so)
MIN_FIT_ROWS = 10
# stacked: the grid of inverse L2 strengths searched by cross-validation on the anchor
STACKED_CS = np.logspace(-3, 3, 13)
DS_TOL = 1e-6  # dawid_skene stops when no posterior moves by more than this
_SUM_TOL = 1e-3  # an answered row must sum to 1 within this
MULTI_LABEL_METHODS = ("first", "mean")
# multi-label: a label's calibration is skipped when the anchor rows a teacher answered hold
# fewer positives (or negatives) of it than this: too few to fit its temperature on
MIN_LABEL_ROWS = 5


@dataclass
class Calibration:
    """One teacher's calibration: probs -> softmax(log clip(probs, EPS) / temperature + bias)."""

    mode: str
    temperature: float
    bias: np.ndarray  # (k,)
    n: int  # anchor rows it was fitted on
    nll_before: float  # mean anchor NLL of the clipped probabilities as given (T = 1, no bias)
    nll_after: float
    ece_before: float  # anchor ECE (llmdistill.evaluate.calibration) before and after
    ece_after: float

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities; NaN rows (no answer) stay NaN. `none` returns a copy."""
        probs = np.asarray(probs, dtype=float)
        if probs.ndim != 2 or probs.shape[1] != len(self.bias):
            raise DataError(f"calibration is for {len(self.bias)} labels but got an array of "
                            f"shape {probs.shape}: apply it to the teacher it was fitted on")
        if self.mode == "none":
            return probs.copy()
        out = np.full(probs.shape, np.nan)
        ok = ~np.isnan(probs).any(axis=1)
        out[ok] = softmax(_logits(probs[ok], self.temperature, self.bias), axis=1)
        return out

    def to_dict(self) -> dict:
        """JSON-ready, rounded."""
        return {"mode": self.mode, "temperature": round(float(self.temperature), 6),
                "bias": [round(float(b), 6) for b in self.bias], "n": int(self.n),
                "nll_before": round(self.nll_before, 6), "nll_after": round(self.nll_after, 6),
                "ece_before": round(self.ece_before, 6), "ece_after": round(self.ece_after, 6)}


@dataclass
class Aggregate:
    """One soft label per text: `probs` (n, k) in label order, NaN rows only where no teacher
    answered; `entropy` (n,) in nats; `info` JSON-ready (what was fitted and how well)."""

    probs: np.ndarray
    entropy: np.ndarray
    info: dict = field(default_factory=dict)


def _logits(probs: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, EPS, 1.0)) / temperature + bias


def _nll(logits: np.ndarray, gold: np.ndarray) -> float:
    return float(-log_softmax(logits, axis=1)[np.arange(len(gold)), gold].mean())


def _ece(probs: np.ndarray, gold: np.ndarray) -> float:
    names = [str(c) for c in range(probs.shape[1])]
    return float(_ece_report(probs, gold.astype(str), names)["ece"])


def _check_gold(gold: np.ndarray, k: int, what: str) -> np.ndarray:
    gold = np.asarray(gold)
    if gold.ndim != 1 or (gold.size and not np.issubdtype(gold.dtype, np.integer)):
        raise DataError(f"{what} must be a 1-d array of integer class ids (got dtype {gold.dtype}, "
                        f"shape {gold.shape}): map the gold label names to their index in labels")
    if gold.size and (gold.min() < 0 or gold.max() >= k):
        raise DataError(f"{what} has class ids outside 0..{k - 1} (min {gold.min()}, max "
                        f"{gold.max()}): map gold labels with the same label list as the teachers")
    return gold.astype(int)


def fit_calibration(probs: np.ndarray, gold: np.ndarray, mode: str) -> Calibration:
    """Fit one teacher's calibration on anchor rows by NLL.

    `probs` (n, k) rows summing to 1 (one-hot rows allowed: clipping at EPS makes them soft),
    `gold` (n,) int class ids; `mode` none | temperature | temperature_bias. `temperature`
    minimises NLL over log T (bounded Brent); `temperature_bias` starts from that T and adds a
    per-class bias (L-BFGS-B, analytic gradient, an L2 penalty on the bias).
    """
    if mode not in ("none", "temperature", "temperature_bias"):
        raise UsageError(f"unknown calibration {mode!r}: use none, temperature or "
                         "temperature_bias")
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise DataError(f"calibration needs an (n, k) array with n ≥ 1 and k ≥ 2 (got shape "
                        f"{probs.shape}): pass the anchor rows' probabilities")
    if not np.isfinite(probs).all():
        raise DataError("calibration got NaN or infinite probabilities: pass only the anchor rows "
                        "the teacher answered")
    n, k = probs.shape
    gold = _check_gold(gold, k, "gold")
    if len(gold) != n:
        raise DataError(f"calibration got {n} probability rows but {len(gold)} gold labels: pass "
                        "one gold label per row")
    zero = np.zeros(k)
    nll_before = _nll(_logits(probs, 1.0, zero), gold)
    ece_before = _ece(probs, gold)
    if mode == "none":
        return Calibration(mode, 1.0, zero, n, nll_before, nll_before, ece_before, ece_before)
    log_p = np.log(np.clip(probs, EPS, 1.0))
    onehot = np.eye(k)[gold]
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    res = minimize_scalar(lambda u: _nll(log_p * np.exp(-u), gold), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    u, bias = float(res.x), zero
    if mode == "temperature_bias":
        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            inv_t, b = np.exp(-theta[0]), theta[1:]
            z = log_p * inv_t + b
            q = softmax(z, axis=1)
            nll = float(-(log_softmax(z, axis=1) * onehot).sum() / n)
            resid = (q - onehot) / n
            grad_u = float(-(resid * log_p).sum() * inv_t)
            grad_b = resid.sum(axis=0) + BIAS_L2 * b / n
            return nll + 0.5 * BIAS_L2 * float(b @ b) / n, np.concatenate([[grad_u], grad_b])

        fit = minimize(objective, np.concatenate([[u], zero]), jac=True, method="L-BFGS-B",
                       bounds=[(lo, hi)] + [(None, None)] * k,
                       options={"ftol": 1e-12, "gtol": 1e-8})
        u, bias = float(fit.x[0]), np.asarray(fit.x[1:], dtype=float)
    temperature = float(np.exp(u))
    calibrated = softmax(_logits(probs, temperature, bias), axis=1)
    return Calibration(mode, temperature, bias, n, nll_before,
                       _nll(_logits(probs, temperature, bias), gold), ece_before,
                       _ece(calibrated, gold))


def _check_teachers(teacher_probs: list[np.ndarray], labels: list[str]) -> list[np.ndarray]:
    """Float (n, k) arrays; an answered row non-negative and summing to 1 (renormalised exactly),
    a failed row all NaN."""
    if not teacher_probs:
        raise UsageError("aggregate needs at least one teacher's probabilities: annotate with a "
                         "teacher first")
    k = len(labels)
    if k < 2 or len(set(labels)) != k:
        raise DataError(f"labels must be at least 2 distinct names (got {labels!r}): fix the label "
                        "set")
    out = []
    for j, p in enumerate(teacher_probs):
        p = np.array(p, dtype=float)
        if p.ndim != 2:
            raise DataError(f"teacher {j}'s probabilities must be an (n, k) array (got shape "
                            f"{p.shape}): pass one row per text and one column per label")
        if p.shape[1] != k:
            raise DataError(f"teacher {j} has {p.shape[1]} classes but there are {k} labels: "
                            "annotate every teacher with the same label set")
        if out and p.shape[0] != out[0].shape[0]:
            raise DataError(f"teacher {j} has {p.shape[0]} rows but teacher 0 has "
                            f"{out[0].shape[0]}: align every teacher to the same texts")
        nan = np.isnan(p)
        if (nan.any(axis=1) & ~nan.all(axis=1)).any():
            raise DataError(f"teacher {j} has rows that are partly NaN: a failed text must be a "
                            "whole NaN row, an answered one all probabilities")
        ok = ~nan.all(axis=1)
        q = p[ok]
        sums = q.sum(axis=1)
        if not np.isfinite(q).all() or (q < 0).any() or (np.abs(sums - 1) > _SUM_TOL).any():
            raise DataError(f"teacher {j} has answered rows that are not probabilities (negative, "
                            "infinite or not summing to 1): pass softmax outputs or one-hot rows")
        p[ok] = q / sums[:, None]
        out.append(p)
    return out


def _check_anchor(anchor_index: np.ndarray | None, anchor_gold: np.ndarray | None, n: int,
                  k: int) -> tuple[np.ndarray, np.ndarray] | None:
    if anchor_index is None and anchor_gold is None:
        return None
    if anchor_index is None or anchor_gold is None:
        raise UsageError("only one of anchor_index and anchor_gold was given: give both, or "
                         "neither")
    idx = np.asarray(anchor_index)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise DataError("anchor_index must be a 1-d array of integer row positions: pass the "
                        "anchor rows' positions in the teachers' arrays")
    gold = _check_gold(anchor_gold, k, "anchor_gold")
    if len(idx) != len(gold):
        raise DataError(f"anchor_index has {len(idx)} rows but anchor_gold {len(gold)}: pass one "
                        "gold label per anchor row")
    if idx.size == 0:
        return None
    if idx.min() < 0 or idx.max() >= n:
        raise DataError(f"anchor_index has positions outside 0..{n - 1} (min {idx.min()}, max "
                        f"{idx.max()}): index the anchor into the same rows as the teachers")
    if len(np.unique(idx)) != len(idx):
        raise DataError("anchor_index repeats a row: each anchor row must appear once")
    return idx.astype(int), gold


def _mean(probs: list[np.ndarray], answered: np.ndarray) -> np.ndarray:
    """Mean over the teachers that answered each row; NaN where none did."""
    total = sum(np.where(answered[:, [j]], p, 0.0) for j, p in enumerate(probs))
    count = answered.sum(axis=1)
    out = np.full(total.shape, np.nan)
    out[count > 0] = total[count > 0] / count[count > 0, None]
    return out


def _first(probs: list[np.ndarray], answered: np.ndarray) -> tuple[np.ndarray, dict]:
    out = probs[0].copy()
    fallback = ~answered[:, 0] & answered[:, 1:].any(axis=1)
    if fallback.any():
        out[fallback] = _mean(probs[1:], answered[:, 1:])[fallback]
    return out, {"fallback_rows": int(fallback.sum())}


def _dawid_skene(probs: list[np.ndarray], answered: np.ndarray,
                 anchor: tuple[np.ndarray, np.ndarray] | None,
                 max_iter: int) -> tuple[np.ndarray, dict]:
    """Dawid & Skene (1979) EM with soft answers: a class prior and per teacher a k×k confusion
    matrix conf[c, l] = P(teacher votes l | gold c).

    A teacher's probability row x is soft evidence about its hidden vote l, so its likelihood
    under gold class c is sum_l x_l conf[c, l] (for a one-hot row: classic Dawid–Skene), and the
    M-step takes the expected counts of (c, l) pairs. The rows are posteriors that carry their
    teacher's own class prior (a temperature_bias calibration's bias is mostly that), so each is
    first divided by its teacher's mean answer: otherwise the prior is counted once per teacher
    on top of the model's own (measured: three 60-70% one-hot teachers, 78% -> 64% accuracy).

    The simpler reading of x as fractional counts (log-likelihood sum_l x_l log conf[c, l]) is
    not a likelihood of anything: a one-hot teacher can reach zero loss and a soft one never can,
    so EM drifts to "the hard teacher is the truth", or, with calibrated (softer) rows, to uniform
    confusions and the majority class (measured: 65% -> 40% accuracy on two 65-70% teachers);
    this form improves with iterations.

    Written here because neither library fits: snorkel's LabelModel takes only hard votes and can
    neither start from nor clamp to an anchor; cleanlab's multiannotator consensus needs a
    classifier's predicted probabilities besides the annotators' labels.
    """
    n, k = probs[0].shape
    rows = answered.any(axis=1)
    w = answered[rows].T  # (m, r)
    x = np.stack([np.nan_to_num(p[rows]) for p in probs])  # (m, r, k), 0 where not answered
    answers = x.copy()
    # posterior / prior ∝ likelihood: each row over its teacher's mean answer, renormalised
    teacher_prior = x.sum(axis=1) / np.maximum(w.sum(axis=1), 1)[:, None]  # (m, k)
    x = x / np.maximum(teacher_prior, EPS)[:, None, :]
    x = np.where(w[:, :, None], x / np.maximum(x.sum(axis=2, keepdims=True), EPS), 0.0)
    pos = np.cumsum(rows) - 1  # row -> position among answered rows

    def counts_to_conf(counts: np.ndarray) -> np.ndarray:
        counts = counts + 1.0  # add-one smoothing, as in the anchor's own estimate
        return counts / counts.sum(axis=2, keepdims=True)

    def evidence(conf: np.ndarray) -> np.ndarray:  # (m, r, k): P(teacher j's row | class c)
        return np.where(w[:, :, None], np.einsum("jrl,jcl->jrc", x, conf), 1.0)

    def e_step(conf: np.ndarray, prior: np.ndarray, clamp: bool) -> tuple[np.ndarray, float]:
        logits = np.log(prior) + np.log(evidence(conf)).sum(axis=0)
        loglik = float(logsumexp(logits, axis=1).sum())
        q = softmax(logits, axis=1)
        if clamp and a_pos.size:
            q[a_pos] = np.eye(k)[a_gold]
        return q, loglik

    def m_step(q: np.ndarray, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ratio = np.where(w[:, :, None], q[None] / evidence(conf), 0.0)  # (m, r, c)
        counts = conf * np.einsum("jrc,jrl->jcl", ratio, x)
        return counts_to_conf(counts), (q.sum(axis=0) + 1.0) / (len(q) + k)

    if anchor is not None:
        keep = rows[anchor[0]]
        a_pos, a_gold = pos[anchor[0][keep]], anchor[1][keep]
        start = np.eye(k)[a_gold]
        conf = counts_to_conf(np.einsum("jr,rc,jrl->jcl", w[:, a_pos], start, x[:, a_pos]))
        prior = (np.bincount(anchor[1], minlength=k) + 1.0) / (len(anchor[1]) + k)
        q = None
    else:
        a_pos, a_gold = np.zeros(0, dtype=int), np.zeros(0, dtype=int)
        q = _mean([p[rows] for p in probs], answered[rows])
        conf = counts_to_conf(np.einsum("jr,rc,jrl->jcl", w, q, x))
        prior = (q.sum(axis=0) + 1.0) / (len(q) + k)
    iterations, converged = 0, False
    while iterations < max_iter:
        iterations += 1
        q_new, _ = e_step(conf, prior, clamp=True)
        conf, prior = m_step(q_new, conf)
        delta = np.inf if q is None else float(np.abs(q_new - q).max())
        q = q_new
        if delta < DS_TOL:
            converged = True
            break
    posterior, loglik = e_step(conf, prior, clamp=False)
    out = np.full((n, k), np.nan)
    out[rows] = posterior
    by_class = np.einsum("jr,rc,jrl->jcl", w, posterior, answers)
    by_class /= np.maximum(by_class.sum(axis=2, keepdims=True), EPS)
    return out, {
        "initialised_from": "anchor" if anchor is not None else "teacher_mean",
        "anchor_clamped_rows": int(a_pos.size), "iterations": iterations,
        "converged": converged, "log_likelihood": round(loglik, 4),
        "class_prior": [round(float(v), 6) for v in prior],
        "confusion": [np.round(c, 6).tolist() for c in conf],
        "confusion_axes": "per teacher, rows gold class, columns the teacher's vote",
        "mean_answer_by_class": [np.round(c, 6).tolist() for c in by_class],
        "anchor_rows_output": "unclamped posterior (anchor rows are clamped to gold only in EM)",
    }


def _features(probs: list[np.ndarray], answered: np.ndarray) -> np.ndarray:
    """Log calibrated probabilities of every teacher side by side (log 1/k where a teacher
    failed) and one missing-indicator column per teacher."""
    k = probs[0].shape[1]
    logs = [np.where(answered[:, [j]], np.log(np.clip(np.nan_to_num(p, nan=1.0), EPS, 1.0)),
                     np.log(1.0 / k)) for j, p in enumerate(probs)]
    return np.hstack(logs + [(~answered).astype(float)])


def _stacked(probs: list[np.ndarray], answered: np.ndarray, labels: list[str],
             anchor: tuple[np.ndarray, np.ndarray] | None, folds: int,
             seed: int) -> tuple[np.ndarray, dict]:
    n, k = probs[0].shape
    if anchor is None:
        raise UsageError("method 'stacked' fits on an anchor of gold labels and none was given: "
                         "give an anchor (student.anchor_size > 0 or --anchor FILE) or set "
                         "label_model.method to mean or dawid_skene")
    rows = answered.any(axis=1)
    keep = rows[anchor[0]]
    idx, gold = anchor[0][keep], anchor[1][keep]
    present, counts = np.unique(gold, return_counts=True)
    if len(present) < 2:
        raise DataError(f"method 'stacked' needs anchor rows of at least 2 classes (got "
                        f"{len(present)} among {len(gold)} answered anchor rows): give a larger "
                        "anchor or set label_model.method to mean or dawid_skene")
    if counts.min() < 2:
        raise DataError(f"method 'stacked' needs at least 2 anchor rows of each class it sees "
                        f"(class {labels[present[counts.argmin()]]!r} has 1): give a larger "
                        "anchor or set label_model.method to mean or dawid_skene")
    n_folds = int(min(folds, counts.min()))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    x = _features(probs, answered)
    with threadpool_limits(limits=1):  # a few hundred rows: BLAS threads only cost time
        return _fit_stacked(x, rows, idx, gold, labels, cv, n_folds, n, k)


def _fit_stacked(x: np.ndarray, rows: np.ndarray, idx: np.ndarray, gold: np.ndarray,
                 labels: list[str], cv: StratifiedKFold, n_folds: int, n: int,
                 k: int) -> tuple[np.ndarray, dict]:
    # GridSearchCV over LogisticRegression rather than LogisticRegressionCV: the latter's
    # arguments (penalty, l1_ratios, scoring, use_legacy_attributes) change and warn across the
    # scikit-learn versions pyproject allows; the search is the same C grid, scored by log-loss.
    search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": list(STACKED_CS)}, cv=cv,
                          scoring="neg_log_loss")
    search.fit(x[idx], gold)
    best_c = float(search.best_params_["C"])
    # the anchor rows' own labels: out of fold, by the chosen C (chosen on the whole anchor)
    oof = cross_val_predict(LogisticRegression(C=best_c, max_iter=1000), x[idx], gold, cv=cv,
                            method="predict_proba")
    cols = search.best_estimator_.classes_
    out = np.full((n, k), np.nan)
    out[rows] = 0.0
    out[np.ix_(rows, cols)] = search.best_estimator_.predict_proba(x[rows])
    out[np.ix_(idx, cols)] = oof
    oof_full = out[idx]
    return out, {
        "C": best_c, "Cs": [float(c) for c in STACKED_CS], "folds": n_folds,
        "anchor_rows": int(len(idx)), "features": int(x.shape[1]),
        "cv_log_loss": round(float(-search.best_score_), 6),
        "anchor_accuracy_out_of_fold": round(float((oof_full.argmax(1) == gold).mean()), 6),
        "anchor_log_loss_out_of_fold": round(_log_loss(oof_full, gold), 6),
        "classes_missing_from_anchor": [labels[c] for c in range(k) if c not in set(cols)],
        "anchor_rows_output": "out-of-fold predictions",
        "out_of_fold_caveat": "C and the teachers' calibration were fitted on the whole anchor",
    }


def _snorkel(probs: list[np.ndarray], answered: np.ndarray,
             anchor: tuple[np.ndarray, np.ndarray] | None, seed: int) -> tuple[np.ndarray, dict]:
    n, k = probs[0].shape
    if len(probs) < 3:
        raise UsageError(f"snorkel's LabelModel needs at least 3 teachers (got {len(probs)}): add "
                         "teachers or set label_model.method to dawid_skene")
    try:
        import torch
        from snorkel.labeling.model import LabelModel
    except ImportError as e:
        raise UsageError("method 'snorkel' needs the snorkel package: pip install snorkel "
                         "(or set label_model.method to dawid_skene)") from e
    rows = answered.any(axis=1)
    votes = np.stack([np.where(answered[:, j], np.nan_to_num(p).argmax(axis=1), -1)
                      for j, p in enumerate(probs)], axis=1)[rows]
    balance = None
    if anchor is not None:
        balance = (np.bincount(anchor[1], minlength=k) + 1.0) / (len(anchor[1]) + k)
    # snorkel's fit seeds the global random, numpy and torch generators: put them back after
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        model = LabelModel(cardinality=k, verbose=False, device="cpu")
        model.fit(L_train=votes, class_balance=balance, seed=seed, progress_bar=False)
        posterior = model.predict_proba(votes)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
    out = np.full((n, k), np.nan)
    out[rows] = posterior
    return out, {"votes": "argmax of each teacher's calibrated probabilities, -1 where it failed",
                 "class_balance": None if balance is None else [round(float(b), 6)
                                                                for b in balance],
                 "teacher_weights": [round(float(v), 6) for v in model.get_weights()]}


def _log_loss(probs: np.ndarray, gold: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-15, 1.0)).mean())


def _entropy(probs: np.ndarray) -> np.ndarray:
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=1)  # NaN rows stay NaN


def resolve_method(cfg: LabelModelConfig, teachers: int, anchored: bool,
                   task: str = "single_label") -> LabelModelConfig:
    """`method: auto` → what the benchmarks chose on dev: with several teachers `stacked` on the
    anchor (`mean` without one; bench/beyond_teacher.py), with one teacher `first` with a
    temperature (bench/demo_teachers.py: dev 74.3 ± 4.2 vs 74.0 ± 2.6 uncalibrated, a tie that
    keeps the soft labels calibrated). Multi-label: `first` with a per-label temperature for one
    teacher, `mean` for several. Any other method is returned as it is."""
    if cfg.method != "auto":
        return cfg
    if teachers == 1:
        return cfg.model_copy(update={"method": "first", "calibration": "temperature"})
    if not get_task(task).exclusive:
        return cfg.model_copy(update={"method": "mean"})
    return cfg.model_copy(update={"method": "stacked" if anchored else "mean"})


def aggregate(teacher_probs: list[np.ndarray], labels: list[str],
              cfg: LabelModelConfig | None = None, anchor_index: np.ndarray | None = None,
              anchor_gold: np.ndarray | None = None, seed: int = 0,
              task: str = "single_label") -> Aggregate:
    """Calibrate each teacher on the anchor, then combine them by `cfg.method`.

    `teacher_probs[j]` (n, k) in `labels` order, an all-NaN row where teacher j failed;
    `anchor_index` row positions of the gold anchor, `anchor_gold` their class ids (both or
    neither); multi-label: `anchor_gold` is an (m, k) 0/1 matrix (`Task.targets`). The result
    has a probability row for every text some teacher answered.
    """
    if not get_task(task).exclusive:
        return _aggregate_multi(teacher_probs, labels, cfg or LabelModelConfig(), anchor_index,
                                anchor_gold, task)
    cfg = resolve_method(cfg or LabelModelConfig(), len(teacher_probs), anchor_index is not None)
    probs = _check_teachers(teacher_probs, labels)
    n, k = probs[0].shape
    anchor = _check_anchor(anchor_index, anchor_gold, n, k)
    answered = np.stack([~np.isnan(p).all(axis=1) for p in probs], axis=1)

    calibrated, cal_info, teachers = [], [], []
    for j, p in enumerate(probs):
        rows = anchor[0][answered[anchor[0], j]] if anchor is not None else np.zeros(0, int)
        gold = anchor[1][answered[anchor[0], j]] if anchor is not None else np.zeros(0, int)
        cal, skipped = None, None
        if cfg.calibration == "none":
            skipped = "calibration is none"
        elif anchor is None:
            skipped = "no anchor given"
        elif len(rows) < MIN_FIT_ROWS:
            skipped = f"{len(rows)} answered anchor rows (< {MIN_FIT_ROWS})"
        else:
            cal = fit_calibration(p[rows], gold, cfg.calibration)
        q = cal.apply(p) if cal is not None else p
        calibrated.append(q)
        cal_info.append(cal.to_dict() if cal is not None else {"skipped": skipped})
        entry = {"answered": int(answered[:, j].sum()), "anchor_answered": int(len(rows))}
        if len(rows):
            entry["anchor_accuracy"] = round(float((p[rows].argmax(1) == gold).mean()), 6)
            entry["anchor_accuracy_calibrated_in_sample"] = round(
                float((q[rows].argmax(1) == gold).mean()), 6)
        teachers.append(entry)
    fitted_cal = any("skipped" not in c for c in cal_info)

    if cfg.method == "first":
        out, specifics = _first(calibrated, answered)
    elif cfg.method == "mean":
        out, specifics = _mean(calibrated, answered), {}
    elif cfg.method == "dawid_skene":
        out, specifics = _dawid_skene(calibrated, answered, anchor, cfg.max_iter)
    elif cfg.method == "stacked":
        out, specifics = _stacked(calibrated, answered, labels, anchor, cfg.folds, seed)
    elif cfg.method == "snorkel":
        out, specifics = _snorkel(calibrated, answered, anchor, seed)
    else:
        raise UsageError(f"unknown label_model.method {cfg.method!r}: use first, mean, "
                         "dawid_skene, stacked or snorkel")

    has = answered.any(axis=1)
    out[~has] = np.nan
    out[has] = np.clip(out[has], 0.0, None)
    out[has] /= out[has].sum(axis=1, keepdims=True)

    info = {
        "method": cfg.method, "labels": list(labels), "teachers_n": len(probs), "rows": n,
        "rows_without_answer": int((~has).sum()),
        "anchor_rows": 0 if anchor is None else int(len(anchor[0])),
        "calibration": {"mode": cfg.calibration, "fitted": fitted_cal,
                        "skipped": None if anchor is not None or cfg.calibration == "none"
                        else "no anchor given: teachers used as they are",
                        "teachers": cal_info},
        "teachers": teachers,
        cfg.method: specifics,
    }
    if anchor is not None:
        ok = has[anchor[0]]
        a_probs, a_gold = out[anchor[0][ok]], anchor[1][ok]
        if cfg.method == "stacked":
            kind = "out_of_fold"
        elif cfg.method in ("dawid_skene", "snorkel") or fitted_cal:
            kind = "in_sample"
        else:
            kind = "unfitted"  # nothing was fitted on the anchor: an honest held-out number
        info["anchor_accuracy"] = {
            "kind": kind, "n": int(ok.sum()),
            "value": round(float((a_probs.argmax(1) == a_gold).mean()), 6) if ok.any() else None,
            "log_loss": round(_log_loss(a_probs, a_gold), 6) if ok.any() else None,
        }
    else:
        info["anchor_accuracy"] = {"kind": "no anchor", "n": 0, "value": None, "log_loss": None}
    return Aggregate(out, _entropy(out), info)


# ---- multi-label -------------------------------------------------------------------------------


def _bce(logits: np.ndarray, gold: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 gold (overflow-free)."""
    return float((np.logaddexp(0.0, logits) - gold * logits).mean())


def _label_logits(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class LabelCalibration:
    """One multi-label teacher's calibration, per label j: p -> sigmoid(logit(clip(p, EPS,
    1 - EPS)) / temperature[j] + bias[j]); a label whose `fitted[j]` is False keeps p as it is."""

    mode: str
    temperature: np.ndarray  # (k,)
    bias: np.ndarray  # (k,)
    fitted: np.ndarray  # (k,) bool
    n: int
    nll_before: float  # mean per-label binary NLL on the anchor, over the fitted labels
    nll_after: float

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities; NaN rows (no answer) stay NaN."""
        probs = np.asarray(probs, dtype=float)
        if probs.ndim != 2 or probs.shape[1] != len(self.bias):
            raise DataError(f"calibration is for {len(self.bias)} labels but got an array of "
                            f"shape {probs.shape}: apply it to the teacher it was fitted on")
        out = probs.copy()
        ok = ~np.isnan(probs).any(axis=1)
        cols = np.flatnonzero(self.fitted)
        if self.mode != "none" and cols.size and ok.any():
            z = _label_logits(probs[np.ix_(ok, cols)])
            out[np.ix_(ok, cols)] = _sigmoid(z / self.temperature[cols] + self.bias[cols])
        return out

    def to_dict(self, labels: list[str]) -> dict:
        """JSON-ready, rounded; labels that were not fitted are listed."""
        return {"mode": self.mode, "n": int(self.n),
                "temperatures": [round(float(t), 6) for t in self.temperature],
                "biases": [round(float(b), 6) for b in self.bias],
                "labels_skipped": [lab for lab, f in zip(labels, self.fitted, strict=True)
                                   if not f],
                "nll_before": round(self.nll_before, 6), "nll_after": round(self.nll_after, 6)}


def fit_label_calibration(probs: np.ndarray, gold: np.ndarray, mode: str) -> LabelCalibration:
    """Fit a multi-label teacher's per-label calibration on anchor rows by binary NLL.

    `probs` (n, k) independent probabilities, `gold` (n, k) 0/1; `mode` none | temperature |
    temperature_bias (bounded Brent over log T; then L-BFGS-B over log T and a bias with the
    same L2 penalty as single-label). A label with fewer than MIN_LABEL_ROWS positive or
    negative rows is left as it is.
    """
    if mode not in ("none", "temperature", "temperature_bias"):
        raise UsageError(f"unknown calibration {mode!r}: use none, temperature or "
                         "temperature_bias")
    probs = np.asarray(probs, dtype=float)
    gold = np.asarray(gold, dtype=float)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape != gold.shape:
        raise DataError(f"calibration needs (n, k) probabilities and gold of the same shape (got "
                        f"{probs.shape} and {gold.shape}): pass the anchor rows' probabilities")
    if not np.isfinite(probs).all():
        raise DataError("calibration got NaN or infinite probabilities: pass only the anchor rows "
                        "the teacher answered")
    n, k = probs.shape
    temperature, bias = np.ones(k), np.zeros(k)
    pos = gold.sum(axis=0)
    fitted = (pos >= MIN_LABEL_ROWS) & (n - pos >= MIN_LABEL_ROWS) & (mode != "none")
    z_all = _label_logits(probs)
    before, after = [], []
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    for j in np.flatnonzero(fitted):
        z, y = z_all[:, j], gold[:, j]
        res = minimize_scalar(lambda u, z=z, y=y: _bce(z * np.exp(-u), y), bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-6})
        u, b = float(res.x), 0.0
        if mode == "temperature_bias":
            def objective(theta: np.ndarray, z=z, y=y) -> tuple[float, np.ndarray]:
                inv_t, bj = np.exp(-theta[0]), theta[1]
                s = z * inv_t + bj
                resid = (_sigmoid(s) - y) / n
                value = _bce(s, y) + 0.5 * BIAS_L2 * bj * bj / n
                return value, np.array([float(-(resid * z).sum() * inv_t),
                                        float(resid.sum() + BIAS_L2 * bj / n)])

            fit = minimize(objective, np.array([u, 0.0]), jac=True, method="L-BFGS-B",
                           bounds=[(lo, hi), (None, None)],
                           options={"ftol": 1e-12, "gtol": 1e-8})
            u, b = float(fit.x[0]), float(fit.x[1])
        temperature[j], bias[j] = np.exp(u), b
        before.append(_bce(z, y))
        after.append(_bce(z / temperature[j] + b, y))
    return LabelCalibration(mode, temperature, bias, fitted, n,
                            float(np.mean(before)) if before else float("nan"),
                            float(np.mean(after)) if after else float("nan"))


def _check_teachers_multi(teacher_probs: list[np.ndarray], labels: list[str]) -> list[np.ndarray]:
    """Float (n, k) arrays; an answered row's probabilities in [0, 1], a failed row all NaN."""
    if not teacher_probs:
        raise UsageError("aggregate needs at least one teacher's probabilities: annotate with a "
                         "teacher first")
    k = len(labels)
    if k < 2 or len(set(labels)) != k:
        raise DataError(f"labels must be at least 2 distinct names (got {labels!r}): fix the label "
                        "set")
    out = []
    for j, p in enumerate(teacher_probs):
        p = np.array(p, dtype=float)
        if p.ndim != 2 or p.shape[1] != k:
            raise DataError(f"teacher {j}'s probabilities must be an (n, {k}) array (got shape "
                            f"{p.shape}): annotate every teacher with the same label set")
        if out and p.shape[0] != out[0].shape[0]:
            raise DataError(f"teacher {j} has {p.shape[0]} rows but teacher 0 has "
                            f"{out[0].shape[0]}: align every teacher to the same texts")
        nan = np.isnan(p)
        if (nan.any(axis=1) & ~nan.all(axis=1)).any():
            raise DataError(f"teacher {j} has rows that are partly NaN: a failed text must be a "
                            "whole NaN row, an answered one all probabilities")
        q = p[~nan.all(axis=1)]
        if not np.isfinite(q).all() or (q < 0).any() or (q > 1).any():
            raise DataError(f"teacher {j} has answered rows with values outside [0, 1]: pass one "
                            "probability per label (multi_label)")
        out.append(p)
    return out


def _check_anchor_multi(anchor_index: np.ndarray | None, anchor_gold: np.ndarray | None, n: int,
                        k: int) -> tuple[np.ndarray, np.ndarray] | None:
    if anchor_index is None and anchor_gold is None:
        return None
    if anchor_index is None or anchor_gold is None:
        raise UsageError("only one of anchor_index and anchor_gold was given: give both, or "
                         "neither")
    gold = np.asarray(anchor_gold, dtype=float)
    if gold.ndim != 2 or gold.shape[1] != k or not np.isin(gold, (0.0, 1.0)).all():
        raise DataError(f"multi-label anchor_gold must be an (m, {k}) matrix of 0/1 (got shape "
                        f"{gold.shape}): build it with get_task('multi_label').targets(gold, "
                        "labels)")
    idx = np.asarray(anchor_index)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise DataError("anchor_index must be a 1-d array of integer row positions: pass the "
                        "anchor rows' positions in the teachers' arrays")
    if len(idx) != len(gold):
        raise DataError(f"anchor_index has {len(idx)} rows but anchor_gold {len(gold)}: pass one "
                        "gold row per anchor row")
    if idx.size == 0:
        return None
    if idx.min() < 0 or idx.max() >= n or len(np.unique(idx)) != len(idx):
        raise DataError(f"anchor_index must hold distinct positions in 0..{n - 1}: index the "
                        "anchor into the same rows as the teachers, each once")
    return idx.astype(int), gold


def _binary_entropy(probs: np.ndarray) -> np.ndarray:
    """Sum over labels of each label's binary entropy (nats); NaN rows stay NaN."""
    p = np.clip(probs, 0.0, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
              + np.where(p < 1, (1 - p) * np.log(np.where(p < 1, 1 - p, 1.0)), 0.0))
    h[np.isnan(probs)] = np.nan
    return h.sum(axis=1)


def _set_scores(probs: np.ndarray, gold: np.ndarray) -> dict:
    """Per-label accuracy (`value`), exact match, micro-F1 and mean binary log-loss of probs
    (decided at 0.5) against 0/1 gold."""
    pred = probs >= 0.5
    truth = gold > 0.5
    tp = float((pred & truth).sum())
    f1 = 2 * tp / max(float(pred.sum() + truth.sum()), 1.0)
    return {"value": round(float((pred == truth).mean()), 6),
            "exact_match": round(float((pred == truth).all(axis=1).mean()), 6),
            "micro_f1": round(f1, 6),
            "log_loss": round(_bce(_label_logits(probs), gold.astype(float)), 6)}


def _aggregate_multi(teacher_probs: list[np.ndarray], labels: list[str], cfg: LabelModelConfig,
                     anchor_index: np.ndarray | None, anchor_gold: np.ndarray | None,
                     task: str) -> Aggregate:
    """`aggregate` for multi-label: per-label calibration, then `first` or `mean` per label."""
    cfg = resolve_method(cfg, len(teacher_probs), anchor_index is not None, task)
    if cfg.method not in MULTI_LABEL_METHODS:
        raise UsageError(f"label_model.method {cfg.method!r} does not support multi_label: use "
                         f"{' or '.join(MULTI_LABEL_METHODS)} (or auto)")
    probs = _check_teachers_multi(teacher_probs, labels)
    n, k = probs[0].shape
    anchor = _check_anchor_multi(anchor_index, anchor_gold, n, k)
    answered = np.stack([~np.isnan(p).all(axis=1) for p in probs], axis=1)
    calibrated, cal_info, teachers = [], [], []
    for j, p in enumerate(probs):
        mask = answered[anchor[0], j] if anchor is not None else np.zeros(0, bool)
        rows = anchor[0][mask] if anchor is not None else np.zeros(0, int)
        gold = anchor[1][mask] if anchor is not None else np.zeros((0, k))
        cal, skipped = None, None
        if cfg.calibration == "none":
            skipped = "calibration is none"
        elif anchor is None:
            skipped = "no anchor given"
        elif len(rows) < MIN_FIT_ROWS:
            skipped = f"{len(rows)} answered anchor rows (< {MIN_FIT_ROWS})"
        else:
            cal = fit_label_calibration(p[rows], gold, cfg.calibration)
            if not cal.fitted.any():
                skipped = (f"no label has {MIN_LABEL_ROWS} positive and {MIN_LABEL_ROWS} "
                           "negative answered anchor rows")
                cal = None
        q = cal.apply(p) if cal is not None else p
        calibrated.append(q)
        cal_info.append(cal.to_dict(labels) if cal is not None else {"skipped": skipped})
        entry = {"answered": int(answered[:, j].sum()), "anchor_answered": int(len(rows))}
        if len(rows):
            entry["anchor_accuracy"] = _set_scores(p[rows], gold)["value"]
            entry["anchor_accuracy_calibrated_in_sample"] = _set_scores(q[rows], gold)["value"]
        teachers.append(entry)
    fitted_cal = any("skipped" not in c for c in cal_info)
    if cfg.method == "first":
        out, specifics = _first(calibrated, answered)
    else:
        out, specifics = _mean(calibrated, answered), {}
    has = answered.any(axis=1)
    out[~has] = np.nan
    out[has] = np.clip(out[has], 0.0, 1.0)
    info = {
        "method": cfg.method, "task": task, "labels": list(labels), "teachers_n": len(probs),
        "rows": n, "rows_without_answer": int((~has).sum()),
        "anchor_rows": 0 if anchor is None else int(len(anchor[0])),
        "calibration": {"mode": cfg.calibration, "fitted": fitted_cal, "per": "label",
                        "skipped": None if anchor is not None or cfg.calibration == "none"
                        else "no anchor given: teachers used as they are",
                        "teachers": cal_info},
        "teachers": teachers,
        cfg.method: specifics,
    }
    if anchor is not None and has[anchor[0]].any():
        ok = has[anchor[0]]
        scores = _set_scores(out[anchor[0][ok]], anchor[1][ok])
        info["anchor_accuracy"] = {"kind": "in_sample" if fitted_cal else "unfitted",
                                   "n": int(ok.sum()), **scores}
    else:
        info["anchor_accuracy"] = {"kind": "no anchor" if anchor is None else "unfitted",
                                   "n": 0, "value": None, "log_loss": None}
    return Aggregate(out, _binary_entropy(out), info)
