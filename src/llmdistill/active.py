"""Active distillation: the teacher labels only the pool texts the student is least sure of.

Round 0 labels a random seed set; every round trains the student on everything labelled so
far, scores the unlabelled rest, and sends the `step` most uncertain texts (spread out by
k-means++ seeding on the student's own embeddings) to the teacher, until the budget of teacher
calls, or of dollars (`teacher.api.max_cost`), is spent.

A budget counts texts sent to the teacher, answers from the annotation cache included, and the
validation split's texts too: what a run uses is what it would have paid for from scratch.

Resume: `out_dir/active.json` is rewritten after every round with every text selected so far.
A rerun with the same data and settings replays those selections (their answers come from the
annotation cache, so nothing is spent twice) and continues at the first unfinished round. The
selection itself depends only on (seed, round) and that round's student, never on gold.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from llmdistill import __version__
from llmdistill.annotate import (
    AnnotationCache,
    BudgetReached,
    annotate,
    to_frame,
    without_demos,
    write_annotations,
)
from llmdistill.config import ActiveConfig, StudentConfig, TeacherConfig
from llmdistill.data import frame_hash, text_hash
from llmdistill.errors import DataError, UsageError
from llmdistill.files import atomic_write
from llmdistill.teachers import Teacher, load_teacher

console = Console(stderr=True)

STATE_FILE = "active.json"
ROUNDS_DIR = "rounds"
STUDENT_DIR = "student"
ANNOTATIONS_FILE = "annotations.parquet"
SINGLE_EVAL = "gold"  # the accuracy key when `evaluate_on` is one frame


@dataclass
class ActiveResult:
    """What an active run produced: the final student, its annotations, the learning curve."""

    out_dir: Path
    student_dir: Path
    annotations: Path
    history: list[dict] = field(default_factory=list)
    calls: int = 0
    dollars: float = 0.0
    stopped_by: str = "budget"  # budget | max_cost | pool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        d = asdict(self)
        for k in ("out_dir", "student_dir", "annotations"):
            d[k] = str(d[k])
        return d


def check_inputs(pool_size: int, validation_size: int, cfg: ActiveConfig) -> None:
    """One-line UsageErrors for a budget, seed set or step that cannot work on this pool."""
    if cfg.step <= 0:
        raise UsageError(f"active step {cfg.step}: send at least 1 text per round (--step)")
    if validation_size < 1:
        raise UsageError("active distillation needs a validation split of at least 1 text "
                         "to choose the student's epoch: give validation texts")
    if cfg.budget < validation_size + cfg.seed_size:
        raise UsageError(f"budget {cfg.budget} calls is less than the validation split "
                         f"({validation_size}) plus the seed set ({cfg.seed_size}): raise "
                         "--budget or lower --seed-size")
    if pool_size < cfg.seed_size:
        raise UsageError(f"the pool holds {pool_size} texts, fewer than the seed set "
                         f"({cfg.seed_size}): lower --seed-size or give more texts")
    needed = cfg.budget - validation_size
    if pool_size < needed:
        raise UsageError(f"the pool holds {pool_size} texts but a budget of {cfg.budget} calls "
                         f"({validation_size} for validation) would label {needed}: lower the "
                         "budget or give more texts")


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """How unsure the student is of each row (higher: less sure).

    margin: minus (top-1 − top-2 probability); entropy: −Σ p log p.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if strategy == "margin":
        top = np.sort(probs, axis=1)
        return -(top[:, -1] - top[:, -2])
    if strategy == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)
    raise UsageError(f"unknown active strategy {strategy!r}: use margin, entropy or random")


def _round_seed(seed: int, round_: int) -> np.random.SeedSequence:
    """The randomness of one round: a function of (seed, round) only, so a rerun repeats it."""
    return np.random.SeedSequence([int(seed), int(round_)])


def select_texts(n: int, strategy: str, seed: int, round_: int, *,
                 probs: np.ndarray | None = None, size: int | None = None,
                 diversity: float = ActiveConfig().diversity,
                 embed_rows: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Indices of the `n` rows to label next.

    random: `n` of `size` rows, seeded by (seed, round). margin/entropy: the `diversity × n`
    most uncertain rows of `probs` (ties in row order), of which `n` are picked by k-means++
    seeding on `embed_rows(candidate indices)` so that they spread over the student's view of
    the texts; diversity 1 (or no `embed_rows`) keeps the `n` most uncertain.
    """
    ss = _round_seed(seed, round_)
    if strategy == "random":
        total = size if size is not None else len(probs)
        return np.random.default_rng(ss).choice(total, size=min(n, total), replace=False)
    scores = uncertainty(probs, strategy)
    order = np.argsort(-scores, kind="stable")
    n = min(n, len(order))
    k = min(len(order), max(n, math.ceil(diversity * n)))
    candidates = order[:k]
    if k == n or embed_rows is None or n == 0:
        return candidates[:n]
    from sklearn.cluster import kmeans_plusplus

    emb = np.asarray(embed_rows(candidates), dtype=np.float64)
    _, picked = kmeans_plusplus(emb, n_clusters=n, random_state=int(ss.generate_state(1)[0]))
    # near-identical embeddings can make k-means++ repeat a point: fill up by uncertainty
    chosen = list(dict.fromkeys(int(i) for i in picked))
    if len(chosen) < n:
        taken = set(chosen)
        chosen += [i for i in range(k) if i not in taken][: n - len(chosen)]
    return candidates[np.asarray(chosen, dtype=np.int64)]


def learning_curve(history: list[dict]) -> list[dict]:
    """The history as flat rows (round, calls, dollars, labelled, agreement, accuracy_<set>)."""
    rows = []
    for h in history:
        row = {k: h[k] for k in ("round", "calls", "dollars", "labelled", "agreement")}
        for name, acc in (h.get("accuracy") or {}).items():
            row[f"accuracy_{name}"] = acc
        rows.append(row)
    return rows


def active_distill(pool: pd.DataFrame, validation: pd.DataFrame, labels: list[str],
                   teacher_cfg: TeacherConfig, student_cfg: StudentConfig,
                   active_cfg: ActiveConfig, cache_dir: Path, out_dir: Path,
                   anchor: pd.DataFrame | None = None, seed: int = 0,
                   evaluate_on: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None, *,
                   demos: list[dict] | None = None, keep_rounds: bool = False,
                   on_round: Callable[[dict], None] | None = None) -> ActiveResult:
    """Distil a student while choosing which pool texts the teacher labels.

    `pool`: unlabelled texts (id, text; a gold `label` column is optional and is read only as
    the anchor of noise-aware training and never to select texts). `validation`: texts the
    teacher labels to choose the student's epoch; **its calls count against
    `active_cfg.budget`**. `anchor`: gold labels (text and `label` or `gold`) for pool texts;
    those in the pool join the seed set first, and the anchor is drawn from the seed set only,
    because the gold prior and the teacher's confusion must be measured on a random sample and
    actively chosen texts are by design not one. Without `anchor`, the pool's own gold column
    (if any) serves, on the seed set's rows. `evaluate_on`: gold-labelled held-out texts (a
    frame, or several by name) whose accuracy each round records. `demos`: the teacher's
    few-shot demos (their rows are dropped from pool and validation). `keep_rounds`: keep each
    round's student in `out_dir/rounds/`. `on_round(record)` is called after every round.

    Writes `out_dir/active.json` (config and per-round history, rewritten each round: the
    resume point), `out_dir/student` (the final student) and `out_dir/annotations.parquet`.
    The teacher's `teacher.api.max_cost` ends the run early, cleanly (stopped_by "max_cost").
    """
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir)
    demos = list(demos or [])
    if seed < 0:
        raise UsageError(f"active seed {seed}: use a seed ≥ 0")
    pool, validation = _prepare(pool, validation, demos, active_cfg, seed)
    check_inputs(len(pool), len(validation), active_cfg)
    if len(labels) < 2:
        raise DataError(f"the label set {labels} needs at least two labels")
    gold = _gold_map(pool, anchor)
    evals = _eval_sets(evaluate_on)
    teacher = load_teacher(teacher_cfg.spec, labels, demos, teacher_cfg, cache_dir)
    cache = AnnotationCache(cache_dir / "annotations.sqlite")
    try:
        run = _ActiveRun(pool, validation, labels, teacher, cache, teacher_cfg, student_cfg,
                         active_cfg, out_dir, gold, seed, evals, demos, keep_rounds, on_round,
                         anchor_given=anchor is not None)
        return run.go()
    finally:
        cache.close()
        teacher.close()


def _prepare(pool: pd.DataFrame, validation: pd.DataFrame, demos: list[dict],
             cfg: ActiveConfig, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pool and validation without demos or duplicates, the pool in text-hash order.

    Hash order makes every selection independent of the input file's row order; texts of the
    validation split are dropped from the pool (they would be labelled twice).
    """
    for name, frame in (("pool", pool), ("validation", validation)):
        if "text" not in frame.columns or "id" not in frame.columns:
            raise DataError(f"the {name} frame needs id and text columns")
    pool = without_demos(pool, demos) if demos else pool
    validation = without_demos(validation, demos) if demos else validation
    validation = validation.assign(text_hash=validation["text"].map(text_hash))
    validation = validation.drop_duplicates("text_hash").reset_index(drop=True)
    pool = pool.assign(text_hash=pool["text"].map(text_hash)).drop_duplicates("text_hash")
    pool = pool[~pool["text_hash"].isin(set(validation["text_hash"]))]
    pool = pool.sort_values("text_hash", kind="stable").reset_index(drop=True)
    if cfg.max_pool is not None and len(pool) > cfg.max_pool:
        keep = np.sort(np.random.default_rng(np.random.SeedSequence([seed, 0, 1])).choice(
            len(pool), size=cfg.max_pool, replace=False))
        pool = pool.iloc[keep].reset_index(drop=True)
    return pool, validation


def _gold_map(pool: pd.DataFrame, anchor: pd.DataFrame | None) -> dict[str, str]:
    """text hash → gold label, from `anchor` if given, else from the pool's label column."""
    source = anchor if anchor is not None else pool
    column = "gold" if "gold" in source.columns else "label"
    if column not in source.columns:
        if anchor is not None:
            raise DataError("the anchor needs a gold `label` (or `gold`) column")
        return {}
    rows = source[source[column].notna()]
    return dict(zip(rows["text"].map(text_hash), rows[column].astype(str), strict=True))


def _eval_sets(evaluate_on: pd.DataFrame | Mapping[str, pd.DataFrame] | None
               ) -> dict[str, pd.DataFrame]:
    """{name: frame with text and gold} from one frame or several."""
    if evaluate_on is None:
        return {}
    sets = {SINGLE_EVAL: evaluate_on} if isinstance(evaluate_on, pd.DataFrame) else evaluate_on
    out = {}
    for name, frame in sets.items():
        column = "label" if "label" in frame.columns else "gold"
        if column not in frame.columns or "text" not in frame.columns:
            raise DataError(f"evaluate_on {name!r} needs text and gold label columns")
        out[str(name)] = pd.DataFrame({"text": frame["text"].astype(str),
                                       "gold": frame[column].astype(str)})
    return out


class _ActiveRun:
    """One run's moving parts: the teacher, the cache, the state file, the labelled rows."""

    def __init__(self, pool: pd.DataFrame, validation: pd.DataFrame, labels: list[str],
                 teacher: Teacher, cache: AnnotationCache, teacher_cfg: TeacherConfig,
                 student_cfg: StudentConfig, cfg: ActiveConfig, out_dir: Path,
                 gold: dict[str, str], seed: int, evals: dict[str, pd.DataFrame],
                 demos: list[dict], keep_rounds: bool,
                 on_round: Callable[[dict], None] | None, anchor_given: bool) -> None:
        self.pool, self.validation, self.labels = pool, validation, labels
        self.teacher, self.cache = teacher, cache
        self.teacher_cfg, self.student_cfg, self.cfg = teacher_cfg, student_cfg, cfg
        self.out_dir, self.gold, self.seed, self.evals = out_dir, gold, seed, evals
        self.demos, self.keep_rounds, self.on_round = demos, keep_rounds, on_round
        self.anchor_given = anchor_given
        self.by_hash = pool.set_index("text_hash")

    # ---- state -------------------------------------------------------------------------

    def key(self) -> dict:
        """What must be equal for a rerun to continue this run's state."""
        key = {
            "pool": frame_hash(self.pool[["id", "text"]]),
            "validation": frame_hash(self.validation[["id", "text"]]),
            "labels": self.labels, "teacher": self.teacher.id,
            "prompt_hash": self.teacher.prompt_hash,
            "student": self.student_cfg.model_dump(mode="json"),
            "active": self.cfg.model_dump(mode="json"), "seed": self.seed,
            "gold": frame_hash(pd.DataFrame({"id": sorted(self.gold),
                                             "text": [self.gold[h] for h in sorted(self.gold)]})),
            "evaluate_on": {k: frame_hash(v.rename(columns={"gold": "label"}))
                            for k, v in self.evals.items()},
        }
        return json.loads(json.dumps(key, default=str))

    def load_state(self) -> dict | None:
        path = self.out_dir / STATE_FILE
        if not path.exists():
            if self.out_dir.exists() and any(self.out_dir.iterdir()):
                raise UsageError(f"{self.out_dir} exists and holds no active run: pass a new "
                                 "--out or delete it")
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is unreadable ({type(e).__name__}): delete {self.out_dir} "
                             "to start again") from None
        if state.get("key") != self.key():
            raise UsageError(f"{self.out_dir} holds an active run with other data or settings: "
                             "pass a new --out or delete it")
        return state

    def save_state(self, state: dict) -> None:
        atomic_write(self.out_dir / STATE_FILE, json.dumps(state, indent=2, default=str) + "\n")

    def new_state(self) -> dict:
        return {
            "llmdistill_version": __version__,
            "key": self.key(),
            "config": {"active": self.cfg.model_dump(mode="json"),
                       "student": self.student_cfg.model_dump(mode="json"),
                       "teacher": {"spec": self.teacher_cfg.spec, "id": self.teacher.id,
                                   "prompt_hash": self.teacher.prompt_hash,
                                   "max_cost": self.teacher_cfg.api.max_cost},
                       "seed": self.seed},
            "budget_note": f"the budget counts every text sent to the teacher, cached answers "
                           f"included; the validation split's {len(self.validation)} texts are "
                           "part of it",
            "pool_texts": len(self.pool),
            "validation_calls": len(self.validation),
            "batches": [self.seed_batch()],
            "history": [],
            "stopped_by": None,
        }

    def seed_batch(self) -> list[str]:
        """Round 0: the anchor's pool texts first, then random pool texts, `seed_size` in all."""
        rng = np.random.default_rng(_round_seed(self.seed, 0))
        hashes = self.pool["text_hash"].to_numpy()
        order = rng.permutation(len(hashes))
        if self.anchor_given:
            anchored = np.array([h in self.gold for h in hashes], dtype=bool)[order]
            order = np.concatenate([order[anchored], order[~anchored]])
        return [str(h) for h in hashes[order[: self.cfg.seed_size]]]

    # ---- labelling ----------------------------------------------------------------------

    def label(self, frame: pd.DataFrame, description: str) -> tuple[pd.DataFrame, bool]:
        """Annotate through the cache; (the rows answered, whether the dollar cap stopped it).

        Cached answers count as spent dollars too, so that the cap bounds the run's whole bill,
        not only what this process sent.
        """
        frame = frame.drop(columns=["text_hash"], errors="ignore").reset_index(drop=True)
        hashes = frame["text"].map(text_hash)
        cached = self.cache.get(self.teacher.id, self.teacher.prompt_hash, hashes)
        self.teacher.spent += sum(a.cost for a in cached.values())
        try:
            out = annotate(frame, self.teacher, self.cache, description=description)
        except BudgetReached:
            done = self.cache.get(self.teacher.id, self.teacher.prompt_hash, hashes)
            keep = hashes.isin(set(done)).to_numpy()
            return to_frame(frame[keep], hashes[keep], done, self.teacher), True
        return out, self.teacher.over_budget()

    def rows(self, hashes: list[str]) -> pd.DataFrame:
        return self.by_hash.loc[hashes].reset_index()

    # ---- the loop -----------------------------------------------------------------------

    def go(self) -> ActiveResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = self.load_state()
        student_dir = self.out_dir / STUDENT_DIR
        complete = state is not None and state["stopped_by"] in ("budget", "pool")
        if complete and student_dir.exists() and (self.out_dir / ANNOTATIONS_FILE).exists():
            console.print(f"{self.out_dir}: this active run is complete")
            return self.result(state)
        state = state or self.new_state()
        previous = None
        if state["stopped_by"] is not None:  # the dollar cap stopped it, or outputs are gone
            previous = state["history"].pop()  # redo the last round
            state["stopped_by"] = None

        val, capped = self.label(self.validation, "annotating validation")
        ann = []  # the rounds already recorded: their answers are in the cache
        for r, batch in enumerate(state["batches"][: len(state["history"])]):
            part, hit = self.label(self.rows(batch), f"round {r} (from the cache)")
            ann.append(part.assign(round=r))
            capped |= hit
        while True:
            r = len(state["history"])
            start = time.perf_counter()
            part, hit = self.label(self.rows(state["batches"][r]), f"round {r}: annotating")
            capped |= hit
            ann.append(part.assign(round=r))
            labelled = pd.concat(ann, ignore_index=True)
            calls = len(val) + len(labelled)
            unlabelled = self.pool[~self.pool["text_hash"].isin(set(labelled["text_hash"]))]
            remaining = self.cfg.budget - calls
            stop = ("max_cost" if capped else "budget" if remaining <= 0
                    else "pool" if unlabelled.empty else None)
            if (stop == "max_cost" and previous is not None and calls == previous["calls"]
                    and student_dir.exists()):  # the cap still holds: nothing new to learn
                state["history"].append(previous)
                state["stopped_by"] = stop
                self.save_state(state)
                self.write_annotations(val, labelled)
                return self.result(state)
            record, round_dir = self.train_round(r, val, labelled, final=stop is not None)
            record.update(calls=calls, pool_calls=len(labelled), added=len(part),
                          dollars=float(val["cost"].sum() + labelled["cost"].sum()))
            score_pool = stop is None and self.cfg.strategy != "random"
            probs = self.score(round_dir, val, unlabelled if score_pool else None, record)
            if stop is None:
                n = min(self.cfg.step, remaining, len(unlabelled))
                idx = select_texts(
                    n, self.cfg.strategy, self.seed, r + 1, probs=probs, size=len(unlabelled),
                    diversity=self.cfg.diversity,
                    embed_rows=lambda i, u=unlabelled, d=round_dir: self.embed(d, u, i))
                state["batches"].append([str(h) for h in unlabelled["text_hash"].iloc[idx]])
            record["seconds"] = time.perf_counter() - start
            state["history"].append(record)
            state["stopped_by"] = stop
            self.save_state(state)
            self.report(record)
            if round_dir != student_dir and not self.keep_rounds:
                shutil.rmtree(round_dir, ignore_errors=True)
            if stop is not None:
                break
        rounds = self.out_dir / ROUNDS_DIR
        if rounds.exists() and not any(rounds.iterdir()):
            rounds.rmdir()
        self.write_annotations(val, labelled)
        return self.result(state)

    def anchor_rows(self, labelled: pd.DataFrame) -> pd.DataFrame | None:
        """The seed set's labelled rows with a gold label (see `active_distill`)."""
        if not self.gold or self.student_cfg.anchor_size == 0:
            return None
        rows = labelled[labelled["round"] == 0].copy()
        rows["gold"] = rows["text_hash"].map(self.gold)
        rows = rows[rows["gold"].notna() & (rows["status"] == "ok")]
        return rows if len(rows) else None

    def train_round(self, r: int, val: pd.DataFrame, labelled: pd.DataFrame,
                    final: bool) -> tuple[dict, Path]:
        """Train round r's student (the final one straight into out_dir/student)."""
        from llmdistill.student.train import train_student

        out = (self.out_dir / STUDENT_DIR if final
               else self.out_dir / ROUNDS_DIR / f"round-{r:02d}")
        if not (labelled["status"] == "ok").any() or not (val["status"] == "ok").any():
            raise UsageError("no text was labelled ok before the budget ran out: raise "
                             "teacher.api.max_cost or the budget")
        manifest = {"teacher": {"spec": self.teacher_cfg.spec, "id": self.teacher.id},
                    "prompt_hash": self.teacher.prompt_hash,
                    "active": {"round": r, "strategy": self.cfg.strategy, "seed": self.seed}}
        result = train_student(labelled, val, self.labels, self.student_cfg, out, manifest,
                               anchor=self.anchor_rows(labelled), overwrite=True)
        return {"round": r, "labelled": int((labelled["status"] == "ok").sum()),
                "best_epoch": result.best_epoch, "train_seconds": result.train_seconds}, out

    def score(self, student_dir: Path, val: pd.DataFrame, unlabelled: pd.DataFrame | None,
              record: dict) -> np.ndarray | None:
        """Agreement with the teacher on validation, accuracy on each evaluation set (into
        `record`), and the student's probabilities for the unlabelled pool (None if not asked).
        """
        from llmdistill.student.predict import StudentClassifier

        clf = StudentClassifier.load(student_dir, threads=self.student_cfg.threads,
                                     backend="torch")
        groups = {"validation": val["text"].tolist(),
                  **{f"eval:{k}": v["text"].tolist() for k, v in self.evals.items()}}
        if unlabelled is not None:
            groups["pool"] = unlabelled["text"].tolist()
        probs = _predict(clf, groups, self.student_cfg.inference_batch_size)
        ok = (val["status"] == "ok").to_numpy()
        pred = np.array(self.labels, dtype=object)[probs["validation"].argmax(axis=1)]
        record["agreement"] = float(np.mean(pred[ok] == val["label"].to_numpy()[ok]))
        record["accuracy"] = {}
        for name, frame in self.evals.items():
            p = np.array(self.labels, dtype=object)[probs[f"eval:{name}"].argmax(axis=1)]
            record["accuracy"][name] = float(np.mean(p == frame["gold"].to_numpy()))
        return probs.get("pool")

    def embed(self, student_dir: Path, unlabelled: pd.DataFrame, idx: np.ndarray) -> np.ndarray:
        from llmdistill.student.features import embed

        texts = unlabelled["text"].iloc[idx].tolist()
        return embed(str(student_dir), texts, batch_size=self.student_cfg.inference_batch_size,
                     max_length=self.student_cfg.max_length)

    def report(self, record: dict) -> None:
        accs = ", ".join(f"accuracy {k} {v:.3f}" for k, v in record["accuracy"].items())
        console.print(f"[bold]active round {record['round']}[/bold]: {record['calls']}/"
                      f"{self.cfg.budget} calls, ${record['dollars']:.4f}, {record['labelled']} "
                      f"labelled, agreement with the teacher {record['agreement']:.3f}"
                      + (f", {accs}" if accs else "") + f" ({record['seconds']:.0f} s)",
                      highlight=False)
        if self.on_round is not None:
            self.on_round(dict(record))

    def write_annotations(self, val: pd.DataFrame, labelled: pd.DataFrame) -> Path:
        """The final store: validation rows (split validation) and pool rows (split train,
        with the round that selected them), loadable by `llmdistill train`."""
        table = pd.concat([val.assign(split="validation", round=pd.NA),
                           labelled.assign(split="train")], ignore_index=True)
        table["round"] = table["round"].astype("Int64")
        manifest = {
            "teacher": {"spec": self.teacher_cfg.spec, "id": self.teacher.id,
                        **self.teacher.info},
            "prompt_hash": self.teacher.prompt_hash,
            "prompt": {"task": self.teacher_cfg.task,
                       "label_descriptions": self.teacher_cfg.label_descriptions,
                       "prefix": self.teacher.prompt.prefix if self.teacher.prompt else None,
                       "suffix": self.teacher.prompt.suffix if self.teacher.prompt else None},
            "demos": self.demos,
            "labels": self.labels,
            "texts": len(table),
            "data_hash": frame_hash(table[["id", "text"]]),
            "tokens": int(table["tokens"].sum()),
            "dollars": float(table["cost"].sum()),
            "active": {"strategy": self.cfg.strategy, "budget": self.cfg.budget,
                       "calls": len(table), "validation_calls": len(val), "seed": self.seed},
        }
        return write_annotations(table, self.out_dir / ANNOTATIONS_FILE, manifest,
                                 overwrite=True)

    def result(self, state: dict) -> ActiveResult:
        last = state["history"][-1]
        return ActiveResult(self.out_dir, self.out_dir / STUDENT_DIR,
                            self.out_dir / ANNOTATIONS_FILE, state["history"], last["calls"],
                            last["dollars"], state["stopped_by"])


def _predict(clf: Any, groups: dict[str, list[str]], batch_size: int) -> dict[str, np.ndarray]:
    """Probabilities for several lists of texts, each distinct text computed once."""
    unique = list(dict.fromkeys(t for texts in groups.values() for t in texts))
    probs = clf.predict_proba(unique, batch_size=batch_size, progress=len(unique) > 2000)
    pos = {t: i for i, t in enumerate(unique)}
    return {k: probs[np.array([pos[t] for t in texts], dtype=np.int64)]
            for k, texts in groups.items()}
