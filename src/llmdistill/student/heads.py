"""The linear head of the zoo's feature students (tfidf, model2vec): multinomial logistic
regression fitted to the teacher's soft labels, with the transformer student's recipe.

Soft labels by the exact duplication trick: each training row appears once per class c with
sample weight w × p_c (zero-weight copies dropped), so the weighted log loss is
Σ_i w_i Σ_c p_ic (−log q_ic), the cross-entropy to the teacher's distribution (the KL term of
the distillation loss at T = 1, up to a constant; `alpha` and `temperature` are the transformer
student's and unused here). One-hot labels reduce to plain logistic regression. The inverse
regularisation C is picked from `student.head_c` by agreement with the teacher's label on the
validation split (validation is used for nothing else); class weights, confidence weighting,
label smoothing and the anchor's prior correction follow the transformer student. The head is
saved as safetensors (coef, intercept), never pickled.

Multi-label (the store's manifest says `task: multi_label`): one-vs-rest, one binary logistic
regression per label on the teacher's probability that the label applies (the same
duplication: each row once as "no" with weight w × (1 − p_j), once as "yes" with w × p_j), a
sigmoid per label at prediction; C is chosen by micro-F1 with the teacher's label sets, and the
per-label thresholds (`student.thresholds`) are set on validation as for the transformer student.
The softmax-only options (prior correction, class weights, label smoothing) are skipped.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from llmdistill import __version__
from llmdistill.config import StudentConfig
from llmdistill.data import clean_text
from llmdistill.errors import DataError, UsageError
from llmdistill.files import atomic_dir
from llmdistill.student.model_card import render_model_card
from llmdistill.student.record import StudentRecord
from llmdistill.tasks import get_task
from llmdistill.tasks.base import sigmoid

if TYPE_CHECKING:
    from llmdistill.student.noise import NoiseEstimate
    from llmdistill.student.targets import TeacherTargets, TrainResult

logger = logging.getLogger(__name__)

HEAD_FILE = "head.safetensors"
_BATCH = StudentConfig().inference_batch_size
# lbfgs iterations per C: a solver limit, not a modelling choice (TF-IDF at large C needs more
# than scikit-learn's 100 to converge).
_MAX_ITER = 1000
# The logit given to a class no training row carried any weight for, below the others' lowest.
_ABSENT_MARGIN = 20.0


@dataclass
class LinearHead:
    """logits = x @ coef.T + intercept; softmax for probabilities."""

    coef: np.ndarray  # (k, d) float32
    intercept: np.ndarray  # (k,) float64

    def __post_init__(self) -> None:
        # the dtypes it is saved in, so that a loaded head computes what the trained one did
        self.coef = np.ascontiguousarray(self.coef, dtype=np.float32)
        self.intercept = np.ascontiguousarray(self.intercept, dtype=np.float64)

    @property
    def parameters(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def logits(self, x: Any) -> np.ndarray:
        """(n, k) logits of dense or scipy-sparse features `x` (n, d)."""
        z = x @ self.coef.T
        return np.asarray(z, dtype=np.float64) + self.intercept

    def predict_proba(self, x: Any) -> np.ndarray:
        """(n, k) probabilities, rows summing to 1."""
        return softmax(self.logits(x))

    def save(self, folder: Path) -> Path:
        """Write `folder/head.safetensors` (inside an `atomic_dir` temp folder)."""
        path = Path(folder) / HEAD_FILE
        save_file({"coef": self.coef, "intercept": self.intercept}, str(path))
        return path

    @classmethod
    def load(cls, folder: Path, labels: list[str], dim: int | None = None) -> LinearHead:
        """Read and check `folder/head.safetensors`: one row per label, `dim` features."""
        path = Path(folder) / HEAD_FILE
        if not path.is_file():
            raise UsageError(f"{folder} has no {HEAD_FILE}: retrain the student with "
                             "`llmdistill train` or restore the file")
        try:
            tensors = load_file(str(path))
            head = cls(coef=tensors["coef"], intercept=tensors["intercept"])
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise UsageError(f"{path} is unreadable ({type(e).__name__}): retrain the student "
                             "or restore the file") from None
        k = len(labels)
        bad_dim = dim is not None and head.coef.shape[1:] != (dim,)
        if head.coef.ndim != 2 or head.coef.shape[0] != k or head.intercept.shape != (k,) \
                or bad_dim:
            raise UsageError(f"{path} holds a head of shape {tuple(head.coef.shape)} for "
                             f"{k} labels{'' if dim is None else f' × {dim} features'}: the "
                             "folder is inconsistent; retrain the student")
        return head


@dataclass
class HeadFit:
    """The chosen head and how it was chosen."""

    head: LinearHead
    c: float  # the chosen inverse regularisation strength
    c_index: int  # its position in `student.head_c`
    agreements: list[float]  # validation agreement with the teacher per C, in head_c order
    validation_agreement: float  # of the chosen C, before the prior correction
    seconds: float  # fitting every C
    noise: dict[str, Any] = field(default_factory=dict)  # train.py's noise record
    task: str = "single_label"  # multi_label: the head's logits are one sigmoid per label

    def selection(self) -> dict[str, Any]:
        """JSON-ready record of the C search."""
        return {"c": self.c, "agreement_by_c": [round(a, 4) for a in self.agreements],
                "seconds": round(self.seconds, 3)}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def soft_label_rows(x: Any, probs: np.ndarray, weights: np.ndarray | None = None
                    ) -> tuple[Any, np.ndarray, np.ndarray]:
    """The duplication trick: each row once per class c with weight w × p_c, zero weights
    dropped. Returns (features, class ids, sample weights); `x` dense or scipy-sparse."""
    n, k = probs.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = (w[:, None] * probs).T.reshape(-1)  # class-major: all rows for class 0, then 1, ...
    rows = np.tile(np.arange(n), k)
    y = np.repeat(np.arange(k), n)
    keep = sw > 0
    rows, y, sw = rows[keep], y[keep], sw[keep]
    return (x[rows] if sp.issparse(x) else np.asarray(x)[rows]), y, sw


def fit_soft_logistic(x: Any, probs: np.ndarray, weights: np.ndarray | None, c: float,
                      warm: Any = None) -> tuple[LinearHead, Any]:
    """Multinomial logistic regression (lbfgs, L2, intercept unpenalised) on soft labels.

    Returns the head with one row per class of `probs` (a class with no weight gets a logit
    _ABSENT_MARGIN below the lowest) and the sklearn estimator, which `warm` (a previous
    estimator fitted on the same rows) lets start from its solution.
    """
    xr, y, sw = soft_label_rows(x, probs, weights)
    present = np.unique(y)
    k = probs.shape[1]
    if len(present) < 2:
        raise DataError("every training text carries the same teacher label: nothing to "
                        "learn; annotate texts of more than one label")
    model = _fit_lbfgs(xr, y, sw, c, warm)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # binary: sklearn's sigmoid z is the softmax of (−z/2, z/2)
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    full_coef = np.zeros((k, coef.shape[1]), dtype=np.float64)
    full_b = np.full(k, float(np.min(intercept)) - _ABSENT_MARGIN)
    full_coef[model.classes_] = coef
    full_b[model.classes_] = intercept
    return LinearHead(coef=full_coef.astype(np.float32), intercept=full_b), model


def _fit_lbfgs(xr: Any, y: np.ndarray, sw: np.ndarray, c: float, warm: Any) -> Any:
    """scikit-learn's lbfgs logistic regression at C (from `warm`'s solution if given); a
    convergence warning becomes one logged line."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = warm if warm is not None else LogisticRegression(max_iter=_MAX_ITER, warm_start=True)
    model.set_params(C=c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(xr, y, sample_weight=sw)
    for w in caught:  # the others as they would have been shown
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning("head C=%g: lbfgs stopped after %d iterations before converging; the "
                       "fit is used as it is", c, _MAX_ITER)
    return model


def fit_one_vs_rest(x: Any, probs: np.ndarray, weights: np.ndarray | None, c: float,
                    warm: list[Any] | None = None) -> tuple[LinearHead, list[Any]]:
    """One binary soft-label logistic regression per label (multi-label): row i appears as
    "no" with weight w_i (1 − p_ij) and as "yes" with w_i p_ij, so each label's weighted log
    loss is the binary cross-entropy to the teacher's probability. A label no row gives any
    "yes" (or any "no") weight gets a zero coefficient and an intercept of −(or +)
    _ABSENT_MARGIN. Returns the (k, d) head of sigmoid logits and the per-label estimators
    (`warm` for the next C; None where no fit ran)."""
    n, k = probs.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    dim = x.shape[1]
    coef = np.zeros((k, dim), dtype=np.float64)
    intercept = np.zeros(k)
    models: list[Any] = []
    for j in range(k):
        p = np.clip(probs[:, j], 0.0, 1.0)
        sw = np.concatenate([w * (1.0 - p), w * p])
        y = np.repeat([0, 1], n)
        rows = np.tile(np.arange(n), 2)
        keep = sw > 0
        if not (keep & (y == 1)).any() or not (keep & (y == 0)).any():
            intercept[j] = _ABSENT_MARGIN if (keep & (y == 1)).any() else -_ABSENT_MARGIN
            models.append(None)
            continue
        xr = x[rows[keep]] if sp.issparse(x) else np.asarray(x)[rows[keep]]
        model = _fit_lbfgs(xr, y[keep], sw[keep], c, warm[j] if warm else None)
        coef[j] = model.coef_[0]
        intercept[j] = model.intercept_[0]
        models.append(model)
    return LinearHead(coef=coef.astype(np.float32), intercept=intercept), models


def agreement(head: LinearHead, x: Any, label_ids: np.ndarray) -> float:
    """Share of rows whose top logit is the teacher's label."""
    return float(np.mean(head.logits(x).argmax(axis=1) == label_ids))


def fit_head(x_train: Any, tr: TeacherTargets, x_val: Any, va: TeacherTargets,
             cfg: StudentConfig, noise: NoiseEstimate | None, *,
             standardise: bool = False, task: str = "single_label") -> HeadFit:
    """The head for features of `tr` / `va` (rows in their order), by the student recipe.

    Per-row weights: `class_weights`, `confidence_weighting` and the store's `weight` column
    (`losses.example_weights`, `noise.class_factors`); targets smoothed by `label_smoothing`.
    Each C of `cfg.head_c` (ascending, each fit starting from the previous one) is scored by
    agreement with the teacher on validation; the best (the smaller C on a tie) is kept as
    fitted. Then, with `prior_correction` and an anchor, the intercept is shifted by
    `noise.prior_shift(gold prior, the head's mean probability on validation)`.
    `standardise` (dense features): fit on z-scored features and fold the scaling back into
    coef and intercept, so the saved head takes the raw features.
    forward_correction is not available for this head and is skipped with a warning.
    Multi-label `task`: `fit_one_vs_rest` per C, scored by micro-F1 of sigmoid ≥ 0.5 against
    the teacher's label sets; no prior correction.
    """
    # Training imports (torch, transformers: train.py owns the noise plan and its record's
    # shape) are made here, so that loading a zoo student needs neither.
    from llmdistill.student.losses import example_weights
    from llmdistill.student.noise import class_factors, prior_shift
    from llmdistill.student.train import describe_noise, noise_plan

    if not get_task(task).exclusive:
        return _fit_multilabel_head(x_train, tr, x_val, va, cfg, noise, standardise)
    plan = noise_plan(cfg, noise)
    if plan["forward_correction"]:
        logger.warning("forward_correction needs a trained network's loss; the %s head is "
                       "plain logistic regression: skipped", cfg.model)
        plan["forward_correction"] = False
    k = tr.probs.shape[1]
    weights = example_weights(tr.probs, cfg.confidence_weighting,
                              class_factors(plan["class_weights"], tr.label_ids, k, noise),
                              tr.row_weights)
    targets = tr.probs
    if cfg.label_smoothing:
        targets = (1.0 - cfg.label_smoothing) * targets + cfg.label_smoothing / k
    mean = scale = None
    if standardise:
        x_train = np.asarray(x_train, dtype=np.float32)
        mean = x_train.mean(axis=0, dtype=np.float64)
        scale = x_train.std(axis=0, dtype=np.float64)
        scale[scale < 1e-12] = 1.0
        x_train = ((x_train - mean) / scale).astype(np.float32)
    check_head_c(cfg)
    order = sorted(range(len(cfg.head_c)), key=lambda i: cfg.head_c[i])
    heads: dict[int, LinearHead] = {}
    agreements = [0.0] * len(cfg.head_c)
    warm = None
    start = time.perf_counter()
    for i in order:
        head, warm = fit_soft_logistic(x_train, targets, weights, cfg.head_c[i], warm)
        if standardise:
            head = _unscaled(head, mean, scale)
        heads[i] = head
        agreements[i] = agreement(head, x_val, va.label_ids)
        logger.info("head C=%g: validation agreement with the teacher %.4f", cfg.head_c[i],
                    agreements[i])
    seconds = time.perf_counter() - start
    best = max(order, key=lambda i: agreements[i])  # max keeps the first: the smallest C
    head = heads[best]
    record = describe_noise(noise, plan, cfg, weights)
    if plan["prior_correction"] and noise is not None:
        student_prior = head.predict_proba(x_val).mean(axis=0)
        shift = prior_shift(noise.gold_prior, student_prior)
        head = LinearHead(coef=head.coef, intercept=head.intercept + shift)
        record.update({"prior_shift": np.round(shift, 4).tolist(),
                       "student_prior_on_validation": np.round(student_prior, 4).tolist(),
                       "shift_folded_into": "head.intercept"})
    return HeadFit(head=head, c=float(cfg.head_c[best]), c_index=best, agreements=agreements,
                   validation_agreement=agreements[best], seconds=seconds, noise=record)


def _fit_multilabel_head(x_train: Any, tr: TeacherTargets, x_val: Any, va: TeacherTargets,
                         cfg: StudentConfig, noise: NoiseEstimate | None,
                         standardise: bool) -> HeadFit:
    """`fit_head` for multi-label: one-vs-rest heads per C, the best micro-F1 kept."""
    from llmdistill.student.losses import example_weights
    from llmdistill.student.targets import micro_f1
    from llmdistill.student.train import describe_noise, noise_plan

    plan = noise_plan(cfg, noise, "multi_label")
    weights = example_weights(tr.probs, cfg.confidence_weighting, None, tr.row_weights,
                              exclusive=False)
    if not (tr.probs > 0).any():
        raise DataError("no training text has any label, by the teacher: nothing to learn; "
                        "annotate texts that some label applies to")
    mean = scale = None
    if standardise:
        x_train = np.asarray(x_train, dtype=np.float32)
        mean = x_train.mean(axis=0, dtype=np.float64)
        scale = x_train.std(axis=0, dtype=np.float64)
        scale[scale < 1e-12] = 1.0
        x_train = ((x_train - mean) / scale).astype(np.float32)
    check_head_c(cfg)
    order = sorted(range(len(cfg.head_c)), key=lambda i: cfg.head_c[i])
    heads: dict[int, LinearHead] = {}
    agreements = [0.0] * len(cfg.head_c)
    warm = None
    start = time.perf_counter()
    for i in order:
        head, warm = fit_one_vs_rest(x_train, tr.probs, weights, cfg.head_c[i], warm)
        if standardise:
            head = _unscaled(head, mean, scale)
        heads[i] = head
        agreements[i] = micro_f1(head.logits(x_val) >= 0, va.label_matrix)
        logger.info("head C=%g: validation micro-F1 with the teacher %.4f", cfg.head_c[i],
                    agreements[i])
    seconds = time.perf_counter() - start
    best = max(order, key=lambda i: agreements[i])
    return HeadFit(head=heads[best], c=float(cfg.head_c[best]), c_index=best,
                   agreements=agreements, validation_agreement=agreements[best],
                   seconds=seconds, noise=describe_noise(noise, plan, cfg, weights),
                   task="multi_label")


def check_head_c(cfg: StudentConfig) -> None:
    """`student.head_c` must name at least one C, every one > 0."""
    if not cfg.head_c or min(cfg.head_c) <= 0:
        raise UsageError(f"student.head_c is {cfg.head_c}: give one or more inverse "
                         "regularisation strengths > 0, e.g. [0.25, 1, 4, 16]")


def _unscaled(head: LinearHead, mean: np.ndarray, scale: np.ndarray) -> LinearHead:
    """The head on raw features of one fitted on (x − mean) / scale."""
    coef = head.coef.astype(np.float64) / scale
    return LinearHead(coef=coef.astype(np.float32), intercept=head.intercept - coef @ mean)


class Features(Protocol):
    """What a head student puts in front of its head (the TF-IDF vectorizers, the static
    embeddings): texts (already `clean_text`ed) in, one feature row per text out."""

    base_model: str | None  # what the features came from (None: nothing), for the card
    info: dict[str, Any]  # recorded as the record's `features`
    parameters: int  # weights besides the head (idf weights, embeddings)

    def transform(self, texts: list[str]) -> Any: ...

    def save(self, folder: Path) -> None: ...


def train_head_student(
    kind: str, make_features: Callable[[list[str]], Features], train: pd.DataFrame,
    validation: pd.DataFrame, labels: list[str], cfg: StudentConfig, out_dir: Path,
    manifest: dict | None = None, *, anchor: pd.DataFrame | None = None,
    overwrite: bool = False, standardise: bool = False,
) -> TrainResult:
    """Train a `kind` student: `prepare_targets`, `make_features(cleaned training texts)`,
    `fit_head`, then write the folder atomically (features, head, README.md, llmdistill.json).

    TrainResult: `best_epoch` is the 1-based position in `student.head_c` of the chosen C
    (these students have no epochs); `train_seconds` covers features (a model2vec distillation
    included) and every head fit; `samples_per_second` is used texts ÷ train_seconds; the
    FLOP-bound fields stay NaN. Multi-label (`manifest["task"]`): `validation_agreement` is the
    micro-F1 with the teacher's label sets, and the record keeps the per-label thresholds.
    """
    from llmdistill.student.targets import (  # imports torch
        TrainResult,
        decision_thresholds,
        prepare_targets,
    )

    task = get_task((manifest or {}).get("task", "single_label"))
    check_head_c(cfg)  # before the data work (and a model2vec distillation)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    tr, va, noise = prepare_targets(train, validation, labels, cfg, anchor, task.name)
    tr_texts = [clean_text(t) for t in tr.texts]
    va_texts = [clean_text(t) for t in va.texts]
    logger.info("training a %s student on %d texts, selecting on %d", kind, len(tr_texts),
                len(va_texts))
    features = make_features(tr_texts)
    x_val = features.transform(va_texts)
    fit = fit_head(features.transform(tr_texts), tr, x_val, va, cfg, noise,
                   standardise=standardise, task=task.name)
    thresholds = None
    if not task.exclusive:
        thresholds = decision_thresholds(cfg, sigmoid(fit.head.logits(x_val)), va.label_matrix)
    seconds = time.perf_counter() - start
    result = TrainResult(
        model_dir=out_dir, used=len(tr.texts), skipped=tr.skipped,
        best_epoch=float(fit.c_index + 1), validation_agreement=fit.validation_agreement,
        samples_per_second=len(tr.texts) / seconds, train_seconds=seconds,
        parameters=int(features.parameters + fit.head.parameters), noise=fit.noise,
    )
    logger.info("%s student: C=%g, validation agreement with the teacher %.3f, %.1f s", kind,
                fit.c, fit.validation_agreement, seconds)
    about = {**({"base_model": features.base_model} if features.base_model else {}),
             **{k: v for k, v in (manifest or {}).items() if k not in ("task", "thresholds")},
             "features": features.info, "head": fit.selection()}
    record = StudentRecord.model_validate({
        **about, "llmdistill_version": __version__, "labels": labels, "kind": kind,
        "student_config": cfg.model_dump(mode="json"), **result.to_dict(), "task": task.name,
        "thresholds": thresholds})
    record.check_decision()
    card = render_model_card(labels, record.student_config, result.to_dict(), about,
                             task=task.name, thresholds=thresholds)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        features.save(tmp)
        fit.head.save(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        record.save(tmp)
    return result


class HeadClassifier:
    """A loaded head student: the same attributes and methods as `StudentClassifier`
    (`task`, `thresholds`; `windowing` is always None: these kinds read texts whole)."""

    def __init__(self, labels: list[str], features: Features, head: LinearHead, backend: str,
                 max_length: int | None = None, *, task: str = "single_label",
                 thresholds: np.ndarray | None = None) -> None:
        self.labels = list(labels)
        self.features = features
        self.head = head
        self.backend = backend
        self.parameters = int(features.parameters + head.parameters)
        self.max_length = max_length
        self.onnx_path: Path | None = None
        self.task: str = get_task(task).name
        self.thresholds: np.ndarray | None = thresholds
        self.windowing = None

    def predict_proba(self, texts: list[str], batch_size: int = _BATCH,
                      progress: bool = False) -> np.ndarray:
        """(n, n_labels) probabilities in input order; texts cleaned as in training. Softmax
        rows (single-label) or a sigmoid per label (multi-label)."""
        exclusive = get_task(self.task).exclusive
        texts = [clean_text(str(t)) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        bar = tqdm(total=len(texts), desc="student", unit="text", disable=not progress)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            x = self.features.transform(chunk)
            out[start:start + len(chunk)] = (self.head.predict_proba(x) if exclusive
                                             else sigmoid(self.head.logits(x)))
            bar.update(len(chunk))
        bar.close()
        return out

    def predict(self, texts: list[str], batch_size: int = _BATCH) -> list[str]:
        """Each text's canonical answer: the most probable label, or (multi-label) the labels
        at or above their thresholds joined by `|`."""
        return self.decide(self.predict_proba(texts, batch_size=batch_size))

    def decide(self, probs: np.ndarray) -> list[str]:
        """Canonical answers of `predict_proba`'s (n, n_labels) probabilities."""
        if get_task(self.task).exclusive:
            return [self.labels[i] for i in np.asarray(probs).argmax(axis=1)]
        return get_task(self.task).decide(probs, self.labels, self.thresholds)


def limit_threads(threads: int | None) -> None:
    """Cap the BLAS/OpenMP threads of this process (like torch.set_num_threads, process-wide)."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)


def load_record(model_dir: Path, kind: str, files: list[str]) -> StudentRecord:
    """The folder's record, checked to be a `kind` student with all of `files` present."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"no such student folder: {model_dir}: give the folder that "
                         "`llmdistill train` wrote")
    record = StudentRecord.load(model_dir)
    if record.kind != kind:
        raise UsageError(f"{model_dir} is a {record.kind} student, not {kind}: load it with "
                         "StudentClassifier.load")
    missing = [f for f in files if not (model_dir / f).is_file()]
    if missing:
        raise UsageError(f"{model_dir} lacks {', '.join(missing)}: the {kind} student folder is "
                         "incomplete; retrain it with `llmdistill train` or restore the files")
    return record
