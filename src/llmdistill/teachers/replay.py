"""Replay labels bought elsewhere (a batch API job, a colleague's CSV) as if a teacher gave them.

Spec: `replay:PATH#COLUMN`, optionally followed by `?` and `&`-separated options:

- `probs=COL_A,COL_B,...`: one probability column per label, in the label set's order; each row
  is normalised to sum to 1. Without it, the label column gives one-hot probabilities.
- `rationale=COL`: a column of the teacher's reasons, kept in the annotation's `raw` field.
- `text=COL`: the text column (default `text`).

Texts are matched by the hash of their cleaned form (`llmdistill.data.clean_text`, as the data
loader cleans them), so ids need not agree between files. Labels are matched after normalising
case and whitespace only; anything else is `off_label` with the raw value kept. A text missing
from the file is an `error` ("not in replay file"); a text listed twice with different answers is
an `error` too (the file contradicts itself). Nothing is ever guessed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd

from llmdistill.data import clean_text, read_frame, text_hash
from llmdistill.errors import TeacherError
from llmdistill.tasks import SEP, get_task
from llmdistill.teachers.base import Annotation, Teacher
from llmdistill.teachers.registry import TeacherRequest

NOT_IN_FILE = "not in replay file"
CONFLICT = "conflicting rows in replay file"
OPTIONS = ("probs", "rationale", "text")


@dataclass(frozen=True)
class ReplaySpec:
    """A parsed `replay:` target: the file, its label column and the optional columns."""

    path: Path
    label_column: str
    prob_columns: tuple[str, ...] = ()
    rationale_column: str | None = None
    text_column: str = "text"


def parse_replay_target(target: str) -> ReplaySpec:
    """`PATH#COLUMN[?probs=A,B,C&rationale=R&text=T]` → ReplaySpec (the file is not read)."""
    path, sep, rest = target.rpartition("#")
    column, _, query = rest.partition("?")
    if not sep or not path or not column.strip():
        raise TeacherError(f"replay teacher {target!r} needs PATH#COLUMN, e.g. "
                           "replay:labels.csv#label?probs=p_neg,p_neu,p_pos&rationale=reason")
    try:
        opts = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise TeacherError(f"replay options {query!r} must look like "
                           "probs=A,B,C&rationale=COL&text=COL") from None
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown or any(len(v) != 1 or not v[0].strip() for v in opts.values()):
        raise TeacherError(f"replay options {query!r}: use each of {', '.join(OPTIONS)} at most "
                           "once, with a value")
    probs = tuple(c.strip() for c in opts["probs"][0].split(",")) if "probs" in opts else ()
    return ReplaySpec(Path(path).expanduser(), column.strip(), probs,
                      opts["rationale"][0].strip() if "rationale" in opts else None,
                      opts["text"][0].strip() if "text" in opts else "text")


def from_spec(request: TeacherRequest) -> ReplayTeacher:
    """`replay:PATH#COLUMN[?...]` → a teacher answering from that file (demos are unused)."""
    return ReplayTeacher(request.target, request.labels, task=request.task)


def normalise_label(value: str) -> str:
    """Case and whitespace only: ' Neutral\\n' → 'neutral'."""
    return " ".join(str(value).split()).lower()


class ReplayTeacher(Teacher):
    """Answers from a file of existing labels; no model is called and nothing is paid."""

    batch_size = 512

    def __init__(self, target: str, labels: list[str], task: str = "single_label") -> None:
        self.spec = parse_replay_target(target)
        self.labels = list(labels)
        self.task = task
        self.multi = not get_task(task).exclusive
        canon = {normalise_label(lab): lab for lab in labels}
        if len(canon) != len(labels):
            raise TeacherError(f"labels {labels} differ only in case or spacing: rename them")
        self._canon = canon
        if self.spec.prob_columns and len(self.spec.prob_columns) != len(labels):
            raise TeacherError(f"replay probs lists {len(self.spec.prob_columns)} columns but the "
                               f"label set {labels} has {len(labels)}: give one per label, in "
                               "that order")
        frame, digest = _read(self.spec)
        self._answers, conflicts = self._index(frame)
        self.prompt = None  # no model is prompted
        settings = {"label_column": self.spec.label_column,
                    "prob_columns": list(self.spec.prob_columns),
                    "rationale_column": self.spec.rationale_column,
                    "text_column": self.spec.text_column, "labels": self.labels}
        if self.multi:  # single-label hashes stay those of earlier versions
            settings["task"] = task
        blob = json.dumps(settings, sort_keys=True)
        self.prompt_hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.id = f"replay:{self.spec.path.name}#{self.spec.label_column}@{digest[:16]}"
        statuses = pd.Series([a.status for a in self._answers.values()]).value_counts()
        self.info = {"backend": "replay", "file": str(self.spec.path), "sha256": digest,
                     "rows": len(frame), "texts": len(self._answers),
                     "conflicting_texts": conflicts,
                     "statuses": {str(k): int(v) for k, v in statuses.items()},
                     "label_prob_disagreements": self._disagreements, **settings}

    def _index(self, frame: pd.DataFrame) -> tuple[dict[str, Annotation], int]:
        """One answer per cleaned text; a text with contradicting rows becomes an error."""
        answers: dict[str, Annotation] = {}
        conflicts = 0
        self._disagreements = 0
        for row in frame.itertuples(index=False):
            h = text_hash(clean_text(str(row.text)))
            ann = self._answer(row)
            old = answers.get(h)
            if old is None:
                answers[h] = ann
            elif old.status != "error" and (old.status, old.probs) != (ann.status, ann.probs):
                answers[h] = Annotation(None, "error", 0.0, raw=CONFLICT)
                conflicts += 1
        return answers, conflicts

    def _answer(self, row: tuple) -> Annotation:
        if self.multi:
            return self._answer_multi(row)
        value = "" if _missing(row.label) else str(row.label)
        label = self._canon.get(normalise_label(value))
        rationale = None if _missing(row.rationale) else str(row.rationale)
        if label is None:
            return Annotation(None, "off_label", 0.0, label_mass=0.0, raw=value)
        idx = self.labels.index(label)
        if not self.spec.prob_columns:
            probs = [1.0 if i == idx else 0.0 for i in range(len(self.labels))]
            return Annotation(probs, "ok", 0.0, label_mass=1.0, raw=rationale)
        try:
            vals = [float(v) for v in row.probs]
        except (TypeError, ValueError):
            vals = [math.nan]
        total = sum(vals)
        if not all(math.isfinite(v) and v >= 0 for v in vals) or not total > 0:
            return Annotation(None, "unparseable", 0.0,
                              raw=f"bad probabilities {list(row.probs)!r}")
        probs = [v / total for v in vals]
        if max(range(len(probs)), key=probs.__getitem__) != idx:
            self._disagreements += 1
        return Annotation(probs, "ok", 0.0, label_mass=min(total, 1.0), raw=rationale)

    def _answer_multi(self, row: tuple) -> Annotation:
        """A label-set cell → 1/0 per label (or the probability columns, each in [0, 1])."""
        rationale = None if _missing(row.rationale) else str(row.rationale)
        names, raw = _label_set(row.label)
        if names is None:
            return Annotation(None, "unparseable", 0.0, raw=f"not a label list: {raw!r}")
        chosen = [self._canon.get(normalise_label(v)) for v in names]
        if any(c is None for c in chosen):
            return Annotation(None, "off_label", 0.0, label_mass=0.0, raw=raw)
        hot = [1.0 if lab in chosen else 0.0 for lab in self.labels]
        if not self.spec.prob_columns:
            return Annotation(hot, "ok", 0.0, label_mass=1.0, raw=rationale)
        try:
            vals = [float(v) for v in row.probs]
        except (TypeError, ValueError):
            vals = [math.nan]
        if not all(math.isfinite(v) and 0 <= v <= 1 for v in vals):
            return Annotation(None, "unparseable", 0.0,
                              raw=f"bad probabilities {list(row.probs)!r}: each must lie in "
                                  "[0, 1]")
        if [v >= 0.5 for v in vals] != [h == 1.0 for h in hot]:
            self._disagreements += 1
        return Annotation(vals, "ok", 0.0, label_mass=1.0, raw=rationale)

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        return [self._lookup(t) for t in texts]

    def _lookup(self, text: str) -> Annotation:
        ann = self._answers.get(text_hash(text)) or self._answers.get(text_hash(clean_text(text)))
        return ann if ann is not None else Annotation(None, "error", 0.0, raw=NOT_IN_FILE)

    def estimate(self, texts: list[str]) -> dict:
        """--dry-run: how many texts the file answers; replaying costs nothing."""
        found = sum(self._lookup(t).raw != NOT_IN_FILE for t in texts)
        return {"texts": len(texts), "dollars": 0.0, "in_file": found,
                "not_in_file": len(texts) - found, "note": f"replayed from {self.spec.path}"}


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _label_set(value: object) -> tuple[list[str] | None, str]:
    """(the names a multi-label cell lists, or None when it is not a list; the cell as text).

    A list/array (Parquet), a JSON list string, or `a|b`; missing, "" and `[]` are empty."""
    if _missing(value):
        return [], ""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()], json.dumps([str(v) for v in value])
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return None, text
        if not isinstance(parsed, list) or any(isinstance(v, (list, dict)) for v in parsed):
            return None, text
        return [str(v) for v in parsed if str(v).strip()], text
    return [v for v in text.split(SEP) if v.strip()], text


def _read(spec: ReplaySpec) -> tuple[pd.DataFrame, str]:
    """The file's needed columns as (text, label, probs, rationale) rows, and its SHA-256."""
    path = spec.path
    df = read_frame(path, TeacherError, "replay file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    wanted = [spec.text_column, spec.label_column, *spec.prob_columns]
    if spec.rationale_column:
        wanted.append(spec.rationale_column)
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise TeacherError(f"replay file {path} has no column(s) {', '.join(missing)} (columns: "
                           f"{', '.join(map(str, df.columns))}): fix the replay: spec")
    out = pd.DataFrame({
        "text": df[spec.text_column],
        "label": df[spec.label_column],
        "probs": list(zip(*(df[c] for c in spec.prob_columns), strict=True))
        if spec.prob_columns else [()] * len(df),
        "rationale": df[spec.rationale_column] if spec.rationale_column else None,
    })
    return out, digest
