"""Self-training: the trained student labels unlabelled pool texts, and a new student trains on
the teacher's labels plus the student's confident pseudo-labels.

Each round the current student predicts the pool; texts whose top probability reaches
`threshold` become annotation rows with the student's probabilities as soft targets (or the
mean of student and teacher where the teacher answered, `source: ensemble`) and a reduced loss
weight. A balance guard keeps the majority class from swamping the rest: each label keeps at
most its share of the teacher's training labels × the number of texts that passed, the most
confident first. The validation split stays teacher-only, so the epoch (and any later
comparison) is still chosen by agreement with the teacher, never with the student's own labels.
Pool texts that are already labelled (training, validation, or whatever the caller excludes,
such as the test split) are never pseudo-labelled.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmdistill.config import DataConfig, SelfTrainingConfig, StudentConfig
from llmdistill.data import clean_text, read_table, resolve, text_hash
from llmdistill.errors import DataError, UsageError

logger = logging.getLogger(__name__)

PSEUDO = "pseudo"
TEACHER = "teacher"
ID_PREFIX = "pseudo:"
_BATCH = StudentConfig().inference_batch_size


@dataclass
class PseudoLabels:
    """One round's pseudo-labels and how many texts got there."""

    rows: pd.DataFrame  # annotation rows (id, text, text_hash, split, label, prob_*, ...)
    pool: int  # pool texts predicted
    passed: int  # of them, top probability ≥ threshold
    predicted: np.ndarray  # (pool,) label id the pseudo-labeller gave every pool text
    teacher_answered: int  # pool texts with an ok teacher answer (source: ensemble)
    teacher_agreement: float | None  # student's label == teacher's on those texts

    @property
    def kept(self) -> int:
        return len(self.rows)


@dataclass
class SelfTrainResult:
    """The final student folder and one record per round."""

    student_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds_trained(self) -> int:
        return sum(1 for r in self.history if not r["skipped"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the settings, the rounds, and where the student is."""
        return {"student_dir": str(self.student_dir), "config": self.config,
                "rounds_trained": self.rounds_trained, "history": self.history}


def load_pool(cfg: SelfTrainingConfig, data_cfg: DataConfig | None = None,
              default: pd.DataFrame | None = None,
              labelled: pd.DataFrame | None = None) -> pd.DataFrame:
    """The unlabelled pool: `cfg.pool` (a file, or an embedded split such as `tweets:train`,
    read with `data_cfg`'s text column), else `default` (the caller's frame).

    Cleaned like training text, deduplicated, without the texts of `labelled`, and capped at
    `cfg.max_pool` by a sample seeded with `data_cfg.split_seed` (independent of row order).
    Gold labels in the pool are dropped: self-training never sees them.
    Returns columns id, text, text_hash.
    """
    data_cfg = data_cfg or DataConfig()
    if cfg.pool:
        where = cfg.pool
        if ":" in cfg.pool and not Path(cfg.pool).exists():
            frame, _ = resolve(cfg.pool, data_cfg)
        else:
            frame = read_table(cfg.pool, data_cfg.text_column, label_column=None)
    elif default is not None:
        where, frame = "(the rest of the training data)", default
    else:
        raise UsageError("self-training has no pool of unlabelled texts: set self_training.pool "
                         "to a file or an embedded split")
    pool = clean_pool(frame, labelled, where)
    if cfg.max_pool is not None and len(pool) > cfg.max_pool:
        pool = (pool.sort_values("text_hash")
                .sample(n=cfg.max_pool, random_state=data_cfg.split_seed)
                .reset_index(drop=True))
    return pool


def clean_pool(frame: pd.DataFrame, labelled: pd.DataFrame | None = None,
               where: str = "pool") -> pd.DataFrame:
    """id, text, text_hash of `frame`'s non-empty, distinct texts not in `labelled`."""
    if "text" not in frame.columns:
        raise DataError(f"the self-training pool {where} has no text column (columns: "
                        f"{', '.join(map(str, frame.columns))}): give a frame with a text column")
    texts = frame["text"].fillna("").astype(str).map(clean_text)
    ids = (frame["id"].astype(str) if "id" in frame.columns
           else pd.Series([f"p{i}" for i in range(len(frame))], index=frame.index))
    pool = pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy()})
    pool = pool[pool["text"].str.len() > 0]
    pool["text_hash"] = pool["text"].map(text_hash)
    pool = pool.drop_duplicates("text_hash")
    known = _hashes(labelled) if labelled is not None else set()
    pool = pool[~pool["text_hash"].isin(known)].reset_index(drop=True)
    if pool.empty:
        raise DataError(f"the self-training pool {where} has no texts that are not already "
                        "labelled: give unlabelled texts in self_training.pool")
    return pool


def pseudo_label(student_dir: Path, pool: pd.DataFrame, labels: list[str],
                 cfg: SelfTrainingConfig, teacher_rows: pd.DataFrame | None = None, *,
                 labelled: pd.DataFrame | None = None,
                 class_share: np.ndarray | None = None, batch_size: int = _BATCH,
                 threads: int | None = None) -> pd.DataFrame:
    """Annotation rows for the pool texts the student at `student_dir` is sure of.

    Each kept row: id `pseudo:<text_hash>`, text, text_hash, split "train", label,
    prob_<label> (soft targets: the student's, or with `cfg.source == "ensemble"` the mean of
    student and teacher where `teacher_rows`, matched by text hash, holds an ok answer), status
    "ok", weight `cfg.weight`, source "pseudo". Texts of `labelled` are skipped. `class_share`
    (per label, e.g. the teacher's label shares) turns on the balance guard. Nothing reaching
    `cfg.threshold` gives an empty frame and a warning.
    """
    pool = clean_pool(pool, labelled)
    return _pseudo_label(student_dir, pool, labels, cfg, teacher_rows, class_share,
                         batch_size, threads).rows


def _pseudo_label(student_dir: Path, pool: pd.DataFrame, labels: list[str],
                  cfg: SelfTrainingConfig, teacher_rows: pd.DataFrame | None,
                  class_share: np.ndarray | None, batch_size: int = _BATCH,
                  threads: int | None = None) -> PseudoLabels:
    """`pseudo_label` on an already cleaned pool, with the round's counts."""
    from llmdistill.student.predict import StudentClassifier

    student = StudentClassifier.load(student_dir, threads=threads, backend="torch")
    if student.labels != list(labels):
        raise UsageError(f"the student in {student_dir} predicts {student.labels}, not "
                         f"{labels}: self-train the student trained on this label set")
    texts = pool["text"].tolist()
    student_probs = student.predict_proba(texts, batch_size=batch_size, progress=True)
    probs, answered, agreement = student_probs, 0, None
    if cfg.source == "ensemble":
        teacher = teacher_probs(pool["text_hash"], teacher_rows, labels)
        has_teacher = np.isfinite(teacher).all(axis=1)
        answered = int(has_teacher.sum())
        probs = student_probs.copy()
        probs[has_teacher] = (student_probs[has_teacher] + teacher[has_teacher]) / 2
        if answered:
            agreement = float(np.mean(student_probs[has_teacher].argmax(1)
                                      == teacher[has_teacher].argmax(1)))
        else:
            logger.warning("self-training source ensemble: the teacher answered none of the %d "
                           "pool texts; the pseudo-labels are the student's alone", len(pool))
    top = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    passed = np.flatnonzero(top >= cfg.threshold)
    if len(passed) == 0:
        logger.warning("self-training: none of the %d pool texts reached the threshold %g: "
                       "lower self_training.threshold", len(pool), cfg.threshold)
    keep = passed if class_share is None else passed[
        balance(predicted[passed], top[passed], class_share, len(labels))]
    return PseudoLabels(rows=_rows(pool.iloc[keep], probs[keep], labels, cfg.weight),
                        pool=len(pool), passed=len(passed), predicted=predicted,
                        teacher_answered=answered, teacher_agreement=agreement)


def teacher_probs(hashes: pd.Series, teacher_rows: pd.DataFrame | None,
                  labels: list[str]) -> np.ndarray:
    """(len(hashes), n_labels) teacher probabilities of each text (matched by text hash) from
    `teacher_rows`' ok answers, renormalised; NaN rows where the teacher has none."""
    out = np.full((len(hashes), len(labels)), np.nan)
    if teacher_rows is None or teacher_rows.empty:
        return out
    cols = [f"prob_{lab}" for lab in labels]
    missing = [c for c in ["status", *cols] if c not in teacher_rows.columns]
    if missing:
        raise DataError(f"the teacher rows lack column(s) {', '.join(missing)}: pass "
                        "annotations made with this label set")
    ok = teacher_rows[teacher_rows["status"].astype(str) == "ok"]
    t_hash = (ok["text_hash"].astype(str) if "text_hash" in ok.columns
              else ok["text"].fillna("").astype(str).map(clean_text).map(text_hash))
    probs = ok[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    sums = probs.sum(axis=1)
    valid = np.isfinite(probs).all(axis=1) & (sums > 0)
    table = pd.DataFrame(probs[valid] / sums[valid, None], index=t_hash[valid].to_numpy())
    table = table[~table.index.duplicated()]
    return table.reindex(pd.Index(hashes.astype(str))).to_numpy(dtype=np.float64)


def balance(label_ids: np.ndarray, confidence: np.ndarray, class_share: np.ndarray,
            n_labels: int) -> np.ndarray:
    """Positions to keep: per label at most ceil(share × len(label_ids)), the most confident
    first (sorted positions). A label with no share keeps nothing."""
    share = np.asarray(class_share, dtype=np.float64)
    if share.shape != (n_labels,) or not np.isfinite(share).all() or (share < 0).any():
        raise UsageError(f"class_share must be {n_labels} finite non-negative numbers")
    total = len(label_ids)
    keep = []
    for c in range(n_labels):
        idx = np.flatnonzero(label_ids == c)
        cap = math.ceil(share[c] / max(share.sum(), 1e-12) * total - 1e-9)
        keep.append(idx[np.argsort(-confidence[idx], kind="stable")[:cap]])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def teacher_shares(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Share of each label among the ok teacher labels of `frame`."""
    ok = frame[frame["status"].astype(str) == "ok"]["label"].astype(str)
    counts = ok.value_counts().reindex(labels, fill_value=0).to_numpy(dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def self_train(annotations: pd.DataFrame, pool: pd.DataFrame, labels: list[str],
               student_cfg: StudentConfig, st_cfg: SelfTrainingConfig, student_dir: Path,
               anchor: pd.DataFrame | None = None, validation: pd.DataFrame | None = None, *,
               manifest: dict | None = None, exclude: pd.DataFrame | None = None,
               teacher_pool: pd.DataFrame | None = None) -> SelfTrainResult:
    """`st_cfg.rounds` rounds of pseudo-labelling with the student in `student_dir` and
    retraining `student_cfg.model` on the teacher's rows plus the kept pseudo-labels.

    `annotations`: the teacher's training rows (with `validation` None: training and validation
    rows told apart by a `split` column). Each round's student replaces `student_dir` (trained
    beside it, renamed into place only when done). `anchor` and `manifest` go to
    `train_student`. `exclude`: more texts never to pseudo-label (the test split).
    `teacher_pool`: teacher answers on pool texts, for `source: ensemble`. A round whose
    threshold nothing passes is recorded as skipped and ends the loop (later rounds would
    see the same student).
    """
    from llmdistill.student.train import train_student

    student_dir = Path(student_dir)
    train, validation = _teacher_splits(annotations, validation)
    frames = [f for f in (train, validation, exclude) if f is not None]
    known = pd.concat([f[["text"]] for f in frames], ignore_index=True)
    pool = clean_pool(pool, known)
    share = teacher_shares(train, labels)
    teacher = train.assign(source=train["source"].fillna(TEACHER)
                           if "source" in train.columns else TEACHER)
    result = SelfTrainResult(student_dir, config=st_cfg.model_dump(mode="json"))
    previous: np.ndarray | None = None
    for r in range(1, st_cfg.rounds + 1):
        start = time.perf_counter()
        pl = _pseudo_label(student_dir, pool, labels, st_cfg, teacher_pool, share,
                           student_cfg.inference_batch_size, student_cfg.threads)
        record = _round_record(r, pl, labels, st_cfg, previous)
        previous = pl.predicted
        if pl.kept == 0:
            logger.warning("self-training round %d skipped: no pseudo-label kept", r)
            result.history.append({**record, "skipped": True,
                                   "seconds": round(time.perf_counter() - start, 2)})
            break
        combined = pd.concat([teacher, pl.rows], ignore_index=True)
        run_manifest = {**(manifest or {}),
                        "self_training": {"config": result.config, "round": r,
                                          "history": [*result.history, record]}}
        trained = train_student(combined, validation, labels, student_cfg, student_dir,
                                run_manifest, anchor=anchor, overwrite=True)
        result.history.append({**record, "skipped": False, "used": trained.used,
                               "validation_agreement": round(trained.validation_agreement, 4),
                               "seconds": round(time.perf_counter() - start, 2)})
        logger.info("self-training round %d: %d of %d pool texts kept; validation agreement "
                    "%.3f", r, pl.kept, pl.pool, trained.validation_agreement)
    return result


def _teacher_splits(annotations: pd.DataFrame, validation: pd.DataFrame | None
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The teacher's training and validation rows."""
    if validation is not None:
        return annotations, validation
    if "split" not in annotations.columns or not (annotations["split"] == "validation").any():
        raise DataError("self-training needs validation rows: pass validation, or annotations "
                        "with a split column that has validation rows")
    return (annotations[annotations["split"] == "train"],
            annotations[annotations["split"] == "validation"])


def _round_record(r: int, pl: PseudoLabels, labels: list[str], cfg: SelfTrainingConfig,
                  previous: np.ndarray | None) -> dict[str, Any]:
    """What one round did, JSON-ready."""
    kept = pl.rows["label"].value_counts().reindex(labels, fill_value=0) if pl.kept else None
    return {
        "round": r,
        "pool": pl.pool,
        "threshold": cfg.threshold,
        "passed": pl.passed,
        "kept": pl.kept,
        "capped": pl.passed - pl.kept,
        "kept_per_label": {lab: int(kept[lab]) if kept is not None else 0 for lab in labels},
        "kept_share": {lab: round(int(kept[lab]) / pl.kept, 4) if kept is not None else 0.0
                       for lab in labels},
        "teacher_answered": pl.teacher_answered,
        "teacher_agreement": (None if pl.teacher_agreement is None
                              else round(pl.teacher_agreement, 4)),
        "agreement_with_previous_round": (None if previous is None else
                                          round(float(np.mean(previous == pl.predicted)), 4)),
    }


def _rows(pool: pd.DataFrame, probs: np.ndarray, labels: list[str],
          weight: float) -> pd.DataFrame:
    """Pool texts as annotation rows carrying soft pseudo-labels."""
    out = pd.DataFrame({
        "id": (ID_PREFIX + pool["text_hash"].astype(str)).to_numpy(),
        "text": pool["text"].to_numpy(),
        "text_hash": pool["text_hash"].to_numpy(),
        "split": "train",
        "label": pd.Series([labels[i] for i in probs.argmax(axis=1)], dtype=object),
    })
    for j, lab in enumerate(labels):
        out[f"prob_{lab}"] = probs[:, j] if len(probs) else np.zeros(0)
    out["status"] = "ok"
    out["weight"] = float(weight)
    out["source"] = PSEUDO
    return out


def _hashes(frame: pd.DataFrame) -> set[str]:
    """Text hashes of a frame's texts, computed from the cleaned text (as the store does)."""
    if "text" not in frame.columns:
        return set(frame["text_hash"].astype(str)) if "text_hash" in frame.columns else set()
    return set(frame["text"].fillna("").astype(str).map(clean_text).map(text_hash))
