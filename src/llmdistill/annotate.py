"""Run a teacher over texts: a SQLite cache that makes any rerun resume, and a Parquet store.

Each text's outcome is committed to the cache the moment it exists, so a run killed at any
instant loses at most the text in flight, and a rerun labels only what is missing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from llmdistill import __version__
from llmdistill.config import DataConfig, TeacherConfig
from llmdistill.data import resolve, text_hash
from llmdistill.errors import TeacherError, UsageError
from llmdistill.files import atomic_path, refuse_existing
from llmdistill.tasks import get_task
from llmdistill.teachers import Annotation, Teacher
from llmdistill.teachers.prompts import pick_demos

MANIFEST_KEY = b"llmdistill.manifest"


class AnnotationCache:
    """One row per (teacher, prompt hash, text hash): the status ledger of every text.

    A cache written before `truncated` existed gains the column on opening (its rows read as
    not truncated).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS annotations (teacher TEXT, prompt_hash TEXT, "
            "text_hash TEXT, status TEXT, probs TEXT, label_mass REAL, seconds REAL, "
            "tokens INTEGER, raw TEXT, created REAL, truncated INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (teacher, prompt_hash, text_hash))")
        self._migrate()
        # dollars of priced API calls; a table of its own keeps older caches readable
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS costs (teacher TEXT, prompt_hash TEXT, text_hash TEXT, "
            "cost REAL, PRIMARY KEY (teacher, prompt_hash, text_hash))")

    def _migrate(self) -> None:
        """Add the columns later versions introduced to a cache an earlier version wrote."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(annotations)")}
        if "truncated" not in columns:
            try:
                with self.db:
                    self.db.execute("ALTER TABLE annotations ADD COLUMN truncated INTEGER "
                                    "NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as e:  # another process migrated it first
                if "duplicate column" not in str(e):
                    raise

    def get(self, teacher: str, prompt_hash: str, hashes: Iterable[str]) -> dict[str, Annotation]:
        out: dict[str, Annotation] = {}
        hashes = list(hashes)
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            rows = self.db.execute(
                "SELECT a.text_hash, status, probs, label_mass, seconds, tokens, raw, cost, "
                "truncated "
                "FROM annotations a LEFT JOIN costs c USING (teacher, prompt_hash, text_hash) "
                f"WHERE a.teacher=? AND a.prompt_hash=? AND a.text_hash IN "
                f"({','.join('?' * len(chunk))})", [teacher, prompt_hash, *chunk])
            for h, status, probs, mass, secs, tokens, raw, cost, truncated in rows:
                out[h] = Annotation(json.loads(probs) if probs else None, status, secs,
                                    mass, raw, tokens or 0, cost or 0.0, bool(truncated))
        return out

    def put_many(self, teacher: str, prompt_hash: str,
                 items: Iterable[tuple[str, Annotation]]) -> None:
        """Commit a batch of (text hash, annotation) in one transaction: all or none of it."""
        with self.db:
            for h, a in items:
                self._put(teacher, prompt_hash, h, a)

    def put(self, teacher: str, prompt_hash: str, h: str, a: Annotation) -> None:
        with self.db:
            self._put(teacher, prompt_hash, h, a)

    def _put(self, teacher: str, prompt_hash: str, h: str, a: Annotation) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO annotations (teacher, prompt_hash, text_hash, status, probs, "
            "label_mass, seconds, tokens, raw, created, truncated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [teacher, prompt_hash, h, a.status, json.dumps(a.probs) if a.probs else None,
             a.label_mass, a.seconds, a.tokens, a.raw, time.time(), int(a.truncated)])
        if a.cost:
            self.db.execute("INSERT OR REPLACE INTO costs VALUES (?,?,?,?)",
                            [teacher, prompt_hash, h, a.cost])

    def get_vectors(self, model: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached hidden-state vectors of `model` (teachers/hidden.py) by text hash."""
        self._vectors_table()
        out: dict[str, np.ndarray] = {}
        hashes = list(hashes)
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            rows = self.db.execute(
                f"SELECT text_hash, vec FROM vectors WHERE model=? AND text_hash IN "
                f"({','.join('?' * len(chunk))})", [model, *chunk])
            out.update({h: np.frombuffer(v, dtype=np.float32).copy() for h, v in rows})
        return out

    def put_vectors(self, model: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Commit a batch of (text hash, vector) in one transaction."""
        self._vectors_table()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?,?,?)",
                [(model, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in items])

    def _vectors_table(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (model TEXT, text_hash TEXT, "
                        "vec BLOB, PRIMARY KEY (model, text_hash))")

    def close(self) -> None:
        self.db.close()


def progress_bar() -> Progress:
    """The progress bar long steps show: count, rate and ETA."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn())


class BudgetReached(UsageError):
    """The spending cap was reached; everything labelled so far is in the cache."""


Labelled = tuple[list[str], list[Annotation]]
"""One finished batch: its text hashes and their annotations, in the same order."""

Labeller = Callable[[list[tuple[str, str]]], Iterable[Labelled]]
"""An engine: given the (text hash, text) pairs to label, yields batches as they finish.

It checks `teacher.over_budget()` before sending each batch and stops sending once it is true.
`label_in_process` is the one-process engine; `llmdistill.scale.annotate.RayTeacher.label_stream`
runs replicas on a Ray cluster. Either way `annotate` alone commits what comes back.
"""


def label_in_process(teacher: Teacher, todo: list[tuple[str, str]]) -> Iterator[Labelled]:
    """The local engine: `teacher.batch_size` texts per `label_probs` call, in order."""
    for i in range(0, len(todo), teacher.batch_size):
        if teacher.over_budget():
            return
        batch = todo[i:i + teacher.batch_size]
        yield [h for h, _ in batch], teacher.label_probs([t for _, t in batch])


def commit_batches(batches: Iterable[Labelled], teacher: Teacher, cache: AnnotationCache,
                   done: dict[str, Annotation], total: int, description: str) -> int:
    """Commit each batch to the cache the moment it arrives, with a progress bar (rate, ETA).

    The one commit path of every engine. Committing is idempotent (the cache key is teacher,
    prompt hash, text hash), so a batch delivered twice is stored once. Returns how many of the
    `total` texts were committed.
    """
    committed: set[str] = set()
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, rate="")
        start = time.perf_counter()
        for hashes, anns in batches:
            cache.put_many(teacher.id, teacher.prompt_hash, zip(hashes, anns, strict=True))
            done.update(zip(hashes, anns, strict=True))
            committed.update(hashes)
            rate = len(committed) / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=len(committed), rate=f"{rate:.2f} texts/s")
    return len(committed)


def annotate(frame: pd.DataFrame, teacher: Teacher, cache: AnnotationCache,
             retry_failed: bool = False, description: str = "annotating",
             labeller: Labeller | None = None) -> pd.DataFrame:
    """Label every text in `frame` (columns id, text, optional label/split) with `teacher`.

    Returns the frame with the teacher's label, per-class probabilities and status per row.
    Texts already in the cache are not labelled again (non-ok ones too, unless retry_failed).
    `labeller` is the engine that runs the teacher (default: `label_in_process`).
    Raises BudgetReached when the teacher's spending cap stops the run early.
    """
    hashes = frame["text"].map(text_hash)
    unique = dict(zip(hashes, frame["text"], strict=True))
    done = cache.get(teacher.id, teacher.prompt_hash, unique)
    todo = [(h, unique[h]) for h in unique
            if h not in done or (retry_failed and done[h].status != "ok")]
    if todo:
        batches = labeller(todo) if labeller else label_in_process(teacher, todo)
        n = commit_batches(batches, teacher, cache, done, len(todo), description)
        if n < len(todo) and teacher.over_budget():
            raise BudgetReached(
                f"spent ${teacher.spent:.4f}, the cap, after {n} of {len(todo)} new texts; "
                "they are cached: rerun with a higher max_cost to continue")
        if n < len(todo):
            raise TeacherError(f"the teacher's engine returned {n} of {len(todo)} texts: rerun "
                               f"to label the rest (those {n} are cached)")
    return to_frame(frame, hashes, done, teacher)


def to_frame(frame: pd.DataFrame, hashes: pd.Series, done: dict[str, Annotation],
             teacher: Teacher) -> pd.DataFrame:
    """Assemble the annotation table in the input's row order.

    `label` is the teacher's answer decided by its task (`teacher.task`): the argmax for
    single-label, every label with probability ≥ 0.5 joined by `|` for multi-label ("" when
    none); None where it gave no answer.
    """
    anns = [done[h] for h in hashes]
    out = frame.rename(columns={"label": "gold"}).reset_index(drop=True).copy()
    out.insert(2, "text_hash", hashes.to_numpy())
    probs = np.array([a.probs if a.probs else [np.nan] * len(teacher.labels) for a in anns],
                     dtype=float).reshape(len(anns), len(teacher.labels))
    ok = np.array([a.status == "ok" for a in anns])
    out["label"] = decide_labels(probs, ok, teacher.labels, getattr(teacher, "task",
                                                                    "single_label"))
    for j, lab in enumerate(teacher.labels):
        out[f"prob_{lab}"] = probs[:, j]
    out["status"] = [a.status for a in anns]
    out["label_mass"] = [a.label_mass for a in anns]
    out["seconds"] = [a.seconds for a in anns]
    out["tokens"] = [a.tokens for a in anns]
    out["cost"] = [a.cost for a in anns]
    out["truncated"] = np.array([bool(getattr(a, "truncated", False)) for a in anns], dtype=bool)
    out["teacher"] = teacher.id
    out["prompt_hash"] = teacher.prompt_hash
    out["raw"] = [a.raw for a in anns]
    out["rationale"] = [rationale_of(a.raw) if a.status == "ok" else None for a in anns]
    return out


def decide_labels(probs: np.ndarray, ok: np.ndarray, labels: list[str],
                  task: str = "single_label") -> list[str | None]:
    """The store's `label` column: the task's answer for each ok row (argmax, or the canonical
    `a|b` set with threshold 0.5), None for the others."""
    if get_task(task).exclusive:
        return [labels[int(np.argmax(p))] if k else None for p, k in zip(probs, ok, strict=True)]
    out: list[str | None] = [None] * len(probs)
    if ok.any():
        for i, answer in zip(np.flatnonzero(ok), get_task(task).decide(probs[ok], labels),
                             strict=True):
            out[int(i)] = answer
    return out


def rationale_of(raw: str | None) -> str | None:
    """The teacher's reason for its label, where it gave one: the first of `reasons` in an
    `openai:` reasoning reply's record, or a replayed rationale column (plain text)."""
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return raw  # replay keeps the rationale column's text as it is
    if isinstance(record, dict) and record.get("reasons"):
        return str(record["reasons"][0])
    return None


FEATURES_COLUMN = "teacher_features"


def hidden_states(frame: pd.DataFrame, embedder, cache: AnnotationCache) -> pd.DataFrame:
    """`frame` with the embedder's vector of each text in `teacher_features` (feature
    distillation); vectors are committed to the cache batch by batch, so a rerun resumes."""
    hashes = frame["text"].map(text_hash)
    unique = dict(zip(hashes, frame["text"], strict=True))
    done = cache.get_vectors(embedder.id, unique)
    todo = [h for h in unique if h not in done]
    if todo:
        with progress_bar() as bar:
            task = bar.add_task("teacher hidden states", total=len(todo), rate="")
            start = time.perf_counter()
            for i in range(0, len(todo), embedder.batch_size):
                batch = todo[i:i + embedder.batch_size]
                vecs = embedder.embed([unique[h] for h in batch])
                cache.put_vectors(embedder.id, zip(batch, vecs, strict=True))
                done.update(zip(batch, vecs, strict=True))
                rate = (i + len(batch)) / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=i + len(batch), rate=f"{rate:.2f} texts/s")
    out = frame.copy()
    out[FEATURES_COLUMN] = [done[h] for h in hashes]
    return out


def teacher_columns(i: int, labels: list[str]) -> dict[str, str]:
    """The store's columns of teacher `i` (0-based): label, status and one probability per label."""
    cols = {"label": f"t{i}_label", "status": f"t{i}_status"}
    return cols | {f"prob_{lab}": f"t{i}_prob_{lab}" for lab in labels}


def teacher_count(store: pd.DataFrame) -> int:
    """How many teachers' columns the store holds (0 for a store of one teacher's answers)."""
    n = 0
    while f"t{n}_status" in store.columns:
        n += 1
    return n


def teacher_probs(store: pd.DataFrame, i: int, labels: list[str]) -> np.ndarray:
    """(n, k) probabilities of teacher `i`; NaN rows where it gave no usable answer."""
    cols = teacher_columns(i, labels)
    probs = store[[cols[f"prob_{lab}"] for lab in labels]].to_numpy(dtype=float, copy=True)
    probs[store[cols["status"]].astype(str).to_numpy() != "ok"] = np.nan
    return probs


def merge_teachers(tables: list[pd.DataFrame], labels: list[str],
                   task: str = "single_label") -> pd.DataFrame:
    """One store from several teachers' tables of the same rows, in the same order.

    Each teacher keeps its own label, status and probabilities (`t{i}_…` columns); seconds,
    tokens and dollars are summed over teachers, and a text is `truncated` when any teacher saw
    only part of it. The top-level label/prob/status columns start as the first teacher's (its
    label decided by `task` from its probabilities) and are replaced by the label model's
    aggregate (`set_aggregate`); a row counts as answered when any teacher answered it.
    """
    base = tables[0]
    for t in tables[1:]:
        if len(t) != len(base) or (t["text_hash"].to_numpy() != base["text_hash"].to_numpy()).any():
            raise ValueError("merge_teachers needs every teacher's table over the same rows")
    out = base.copy()
    statuses = np.stack([t["status"].astype(str).to_numpy() for t in tables])
    for i, t in enumerate(tables):
        for src, dst in teacher_columns(i, labels).items():
            out[dst] = t[src].to_numpy()
    for col in ("seconds", "tokens", "cost"):
        out[col] = sum(t[col].fillna(0).to_numpy() for t in tables)
    if any("truncated" in t.columns for t in tables):
        out["truncated"] = np.any([t["truncated"].fillna(False).to_numpy(dtype=bool)
                                   if "truncated" in t.columns else np.zeros(len(t), bool)
                                   for t in tables], axis=0)
    if not get_task(task).exclusive:  # the first teacher's answer, as its task decides it
        first = base[[f"prob_{lab}" for lab in labels]].to_numpy(dtype=float)
        out["label"] = decide_labels(first, base["status"].astype(str).to_numpy() == "ok",
                                     labels, task)
    any_ok = (statuses == "ok").any(axis=0)
    out["status"] = np.where(any_ok, "ok", statuses[0])
    out["teacher"] = "+".join(dict.fromkeys(str(t["teacher"].iloc[0]) for t in tables)) \
        if len(base) else ""
    return out


def set_aggregate(store: pd.DataFrame, probs: np.ndarray, entropy: np.ndarray,
                  labels: list[str], task: str = "single_label") -> pd.DataFrame:
    """The store with the label model's soft label as its label/prob/status columns (`label`
    decided by `task`: argmax, or the labels with probability ≥ 0.5 for multi-label)."""
    out = store.copy()
    ok = np.isfinite(probs).all(axis=1)
    for j, lab in enumerate(labels):
        out[f"prob_{lab}"] = probs[:, j]
    out["label"] = decide_labels(probs, ok, labels, task)
    keep = out["status"].astype(str).where(out["status"].astype(str) != "ok", "no_answer")
    out["status"] = np.where(ok, "ok", keep)
    out["entropy"] = entropy
    return out


def status_counts(df: pd.DataFrame) -> dict[str, int]:
    return {k: int(v) for k, v in df["status"].value_counts().items()}


def write_annotations(df: pd.DataFrame, path: Path, manifest: dict,
                      overwrite: bool = False) -> Path:
    """Atomically write the store with its manifest in the Parquet metadata."""
    path = Path(path)
    if not overwrite:
        refuse_existing(path)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    manifest = {"llmdistill_version": __version__, "written": time.time(), **manifest,
                "status_counts": status_counts(df)}
    if "truncated" in df.columns:  # texts some teacher saw only the start of
        manifest["truncated"] = int(df["truncated"].fillna(False).astype(bool).sum())
    meta[MANIFEST_KEY] = json.dumps(manifest, default=str).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return path


def read_annotations(path: Path) -> tuple[pd.DataFrame, dict]:
    """The annotation table and its manifest."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"annotations {path} not found: run `llmdistill annotate` first")
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise UsageError(f"{path} is not an annotation Parquet file ({type(e).__name__})") from None
    raw = (table.schema.metadata or {}).get(MANIFEST_KEY)
    if raw is None:
        raise UsageError(f"{path} has no llmdistill manifest: write it with `llmdistill annotate`")
    return table.to_pandas(), json.loads(raw)


def demos_for(source: str | pd.DataFrame | None, labels: list[str], cfg: TeacherConfig,
              data_cfg: DataConfig | None = None, task: str = "single_label") -> list[dict]:
    """The few-shot demos every command uses: `cfg.n_demos` label-balanced, seeded rows.

    `source` is labelled training data: a frame, or a DATA spec (file or embedded split) read
    with `data_cfg`; None gives no demos (zero-shot). Multi-label demos carry canonical `a|b`
    label strings and are balanced over the labels they hold.
    """
    if source is None:
        return []
    if isinstance(source, str):
        frame, _ = resolve(source, data_cfg)
        if "label" not in frame.columns:
            raise UsageError(f"the demo data {source} has no label column: give labelled data "
                             "for demos (--demos)")
        source = frame
    return pick_demos(source, labels, cfg.n_demos, cfg.demo_seed, task)


def without_demos(frame: pd.DataFrame, demos: list[dict]) -> pd.DataFrame:
    """`frame` minus the rows shown to the teacher as demos (they would be answered from memory)."""
    return frame[~frame["id"].isin({d["id"] for d in demos})]
