"""The human review loop: pick the texts whose gold label would help most, hand them to a person
(a CSV, or Label Studio with pre-annotations), and read the labels back as the anchor.

The anchor (a few hundred gold-labelled training texts) measures and corrects the teacher's
noise (`student.noise`). Labelling texts at random spends most of that effort where the teacher,
the student and the label model already agree; `pick_for_review` ranks the training rows of a
run's store by how much a human label is likely to change, `write_review` writes the review
folder, and `read_anchor` reads a filled-in review CSV or any of Label Studio's exports (JSON,
JSON-MIN, CSV) into `id, text, text_hash, gold`.

The files are plain JSON, XML and CSV written here rather than through label-studio-sdk: the SDK
is a client for a running server and pulls opencv and a numpy pin, while the formats are small
and documented (https://labelstud.io/guide/predictions, https://labelstud.io/guide/export);
tests/test_review.py checks them with the SDK's LabelInterface and Converter.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from llmdistill.config import StudentConfig
from llmdistill.data import clean_text, text_hash
from llmdistill.errors import DataError, UsageError
from llmdistill.files import atomic_dir, refuse_existing

logger = logging.getLogger(__name__)

REVIEW_CSV = "review.csv"
TASKS_JSON = "labelstudio_tasks.json"
CONFIG_XML = "labelstudio_config.xml"
FROM_NAME = "label"  # the Choices control of the labeling config: the key of every export
TO_NAME = "text"  # the Text object it labels, fed from the task's data["text"]
# Our id travels under its own key: Label Studio's JSON-MIN export replaces data["id"] with its
# own task id, and its CSV export mixes the two.
ID_KEY = "llmdistill_id"
MODEL_VERSION = "llmdistill-review"
DEFAULT_K = 200

# The review score is a weighted mean of terms in [0, 1], so it lies in [0, 1] itself. Terms a
# store cannot have (teachers disagreeing with one teacher, a flag without confident learning)
# are left out and the remaining weights renormalised. Student–teacher disagreement weighs most:
# where they disagree one of them is wrong, and the anchor's job is to say which.
WEIGHTS = {
    "disagreement": 0.35,  # total variation distance between the teacher's and student's probs
    "teachers": 0.20,  # mean pairwise total variation distance between the teachers that answered
    "teacher_margin": 0.15,  # 1 − (top − second) of the aggregate teacher probabilities
    "student_margin": 0.15,  # 1 − (top − second) of the student's probabilities
    "flag": 0.15,  # 1 when confident learning flagged the row as a likely teacher error
}
LOW_MARGIN = 0.2  # a margin below this is named as a reason
_TEACHER_LABEL = re.compile(r"^t(\d+)_label$")
_LS_META = ("annotation_id", "annotator")  # keys every Label Studio JSON-MIN/CSV row carries


def candidates(store: pd.DataFrame, exclude_ids: set[str] | None = None) -> pd.DataFrame:
    """The rows a human may label: training rows only (test is the evaluation's gold, and
    validation picks the student's epoch by agreement with the teacher, so a reviewed label
    there could not act as an anchor), not in `exclude_ids`.

    A store without a split column (from `llmdistill annotate`) is all training rows.
    """
    keep = pd.Series(True, index=store.index)
    if "split" in store.columns:
        keep &= store["split"].astype(str) == "train"
    if exclude_ids:
        keep &= ~store["id"].astype(str).isin({str(i) for i in exclude_ids})
    return store[keep]


def pick_for_review(store: pd.DataFrame, student_probs: np.ndarray, labels: list[str], k: int,
                    exclude_ids: set[str] | None = None) -> pd.DataFrame:
    """The `k` training rows (see `candidates`) whose human label would help most, best first.

    `student_probs` is (len(store), len(labels)), aligned with `store`'s rows. Each row's score
    is the weighted mean of `WEIGHTS`' terms; a row the teacher failed on (status not ok) has
    no teacher label at all and counts as full disagreement and zero teacher margin. Ties go to
    the smaller text hash, so the pick depends on the contents only, never on the row order.
    Columns: id, text, text_hash, split, teacher, student, suggestion (the argmax of the mean
    of teacher and student), suggestion_prob, reasons, score, teacher_prob_<label>,
    student_prob_<label>.
    """
    if k < 1:
        raise UsageError(f"k = {k}: ask for at least 1 text to review (--k)")
    probs = np.asarray(student_probs, dtype=np.float64)
    if probs.shape != (len(store), len(labels)):
        raise UsageError(f"student probabilities have shape {probs.shape}, expected "
                         f"{(len(store), len(labels))} (one row per store row, one column per "
                         "label): predict on the same rows")
    scored = _score(store.reset_index(drop=True), probs, labels)
    pool = candidates(scored, exclude_ids)
    if pool.empty:
        raise DataError(f"no texts to review: none of the {len(store)} rows is a training row "
                        "that is not excluded; pick from a run with training texts, or exclude "
                        "fewer")
    pool = pool.sort_values(["score", "text_hash", "id"], ascending=[False, True, True],
                            kind="mergesort")
    return pool.drop_duplicates("text_hash").head(k).reset_index(drop=True)


def _score(store: pd.DataFrame, student: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """The store's rows with their review score, its reasons and both sides' probabilities."""
    missing = [f"prob_{lab}" for lab in labels if f"prob_{lab}" not in store.columns]
    if missing:
        raise DataError(f"the annotation store lacks {missing}: give the store written for "
                        f"labels {labels}")
    teacher = store[[f"prob_{lab}" for lab in labels]].to_numpy(dtype=np.float64)
    ok = np.isfinite(teacher).all(axis=1) & (teacher.sum(axis=1) > 0)
    if "status" in store.columns:
        ok &= store["status"].astype(str).to_numpy() == "ok"
    teacher = np.where(ok[:, None], teacher / np.where(ok, teacher.sum(axis=1), 1)[:, None], 0)
    student = student / student.sum(axis=1, keepdims=True)
    lab = np.asarray(labels, dtype=object)
    t_label = np.where(ok, lab[teacher.argmax(axis=1)], None)
    s_label = lab[student.argmax(axis=1)]

    terms = {
        "disagreement": np.where(ok, 0.5 * np.abs(teacher - student).sum(axis=1), 1.0),
        "teacher_margin": np.where(ok, 1 - _margin(teacher), 1.0),
        "student_margin": 1 - _margin(student),
    }
    panel = _teacher_panel(store, labels)
    if panel is not None:
        terms["teachers"], split_votes = panel
    if "issue" in store.columns:
        terms["flag"] = store["issue"].astype("boolean").fillna(False).to_numpy(dtype=np.float64)
    total = sum(WEIGHTS[t] for t in terms)
    score = sum(WEIGHTS[t] * v for t, v in terms.items()) / total

    status = (store["status"].astype(str).to_numpy() if "status" in store.columns
              else np.where(ok, "ok", "missing"))
    reasons = []
    for i in range(len(store)):
        why = []
        if not ok[i]:
            why.append(f"teacher failed ({status[i]})")
        elif t_label[i] != s_label[i]:
            why.append("student≠teacher")
        if panel is not None and split_votes[i]:
            why.append("teachers disagree")
        if ok[i] and 1 - terms["teacher_margin"][i] < LOW_MARGIN:
            why.append("low teacher margin")
        if 1 - terms["student_margin"][i] < LOW_MARGIN:
            why.append("low student margin")
        if "flag" in terms and terms["flag"][i]:
            why.append("flagged by confident learning")
        reasons.append("; ".join(why))

    mean = np.where(ok[:, None], (teacher + student) / 2, student)
    out = pd.DataFrame({
        "id": store["id"].astype(str),
        "text": store["text"].astype(str),
        "text_hash": (store["text_hash"].astype(str) if "text_hash" in store.columns
                      else store["text"].astype(str).map(text_hash)),
        "split": store["split"].astype(str) if "split" in store.columns else "",
        "teacher": t_label,
        "student": s_label,
        "suggestion": lab[mean.argmax(axis=1)],
        "suggestion_prob": np.round(mean.max(axis=1), 4),
        "reasons": reasons,
        "score": np.round(score, 6),
    })
    for j, name in enumerate(labels):
        out[f"teacher_prob_{name}"] = np.where(ok, np.round(teacher[:, j], 4), np.nan)
    for j, name in enumerate(labels):
        out[f"student_prob_{name}"] = np.round(student[:, j], 4)
    return out


def _margin(p: np.ndarray) -> np.ndarray:
    top = np.sort(p, axis=1)
    return top[:, -1] - top[:, -2]


def _teacher_panel(store: pd.DataFrame, labels: list[str]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """With two or more teachers (t{i}_label columns): their mean pairwise total variation
    distance per row, and whether their labels differ. Teachers that failed on a row are left
    out of it; their own probabilities (t{i}_prob_<label>) are used when stored, else their
    label as one-hot."""
    idx = sorted(int(m.group(1)) for c in store.columns if (m := _TEACHER_LABEL.match(str(c))))
    if len(idx) < 2:
        return None
    index = {lab: j for j, lab in enumerate(labels)}
    probs, oks = [], []
    for i in idx:
        cols = [f"t{i}_prob_{lab}" for lab in labels]
        said = store[f"t{i}_label"].map(lambda v: index.get(v, -1) if isinstance(v, str) else -1)
        said = said.to_numpy(dtype=np.int64)
        if all(c in store.columns for c in cols):
            p = store[cols].to_numpy(dtype=np.float64)
            good = np.isfinite(p).all(axis=1) & (p.sum(axis=1) > 0)
            p = np.where(good[:, None], p / np.where(good, p.sum(axis=1), 1)[:, None], 0)
        else:
            good = said >= 0
            p = np.eye(len(labels))[np.clip(said, 0, None)] * good[:, None]
        if f"t{i}_status" in store.columns:
            good &= store[f"t{i}_status"].astype(str).to_numpy() == "ok"
        probs.append(p)
        oks.append(good)
    dist = np.zeros(len(store))
    pairs = np.zeros(len(store))
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            both = oks[a] & oks[b]
            dist += np.where(both, 0.5 * np.abs(probs[a] - probs[b]).sum(axis=1), 0)
            pairs += both
    top = np.stack([np.where(o, p.argmax(axis=1), -1) for p, o in zip(probs, oks, strict=True)],
                   axis=1)
    split_votes = np.array([len({v for v in row if v >= 0}) > 1 for row in top], dtype=bool)
    return dist / np.maximum(pairs, 1), split_votes


def labelstudio_config(labels: list[str]) -> str:
    """The labeling config: the text, and one single choice among the labels."""
    choices = "\n".join(f"    <Choice value={quoteattr(lab)}/>" for lab in labels)
    return (f'<View>\n  <Text name="{TO_NAME}" value="$text"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def labelstudio_tasks(picked: pd.DataFrame) -> list[dict[str, Any]]:
    """Label Studio import tasks, each with the suggestion as a pre-annotation (a prediction
    whose score is the suggestion's probability), in the order of `picked`."""
    tasks = []
    for row in picked.itertuples(index=False):
        result = [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                   "value": {"choices": [str(row.suggestion)]}}]
        tasks.append({
            "data": {"text": row.text, ID_KEY: str(row.id), "reasons": row.reasons,
                     "review_score": float(row.score)},
            "predictions": [{"model_version": MODEL_VERSION,
                             "score": float(row.suggestion_prob), "result": result}],
        })
    return tasks


def write_review(picked: pd.DataFrame, out_dir: Path, labels: list[str],
                 overwrite: bool = False) -> dict[str, Path]:
    """Write the review folder: review.csv (with an empty `label` column for the human),
    labelstudio_tasks.json and labelstudio_config.xml, all in one rename.

    An existing folder (perhaps holding labels typed so far) is refused unless `overwrite`.
    Returns the written paths by file name.
    """
    out_dir = Path(out_dir)
    if not overwrite:
        refuse_existing(out_dir, "--out (or --overwrite)")
    if picked.empty:
        raise DataError("no texts to review: pick at least one row first")
    probs = [c for c in picked.columns if c.startswith(("teacher_prob_", "student_prob_"))]
    sheet = picked.assign(label="")[["id", "text", "label", "suggestion", "reasons", "score",
                                     "split", "teacher", "student", *probs]]
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        sheet.to_csv(tmp / REVIEW_CSV, index=False, encoding="utf-8")
        (tmp / TASKS_JSON).write_text(
            json.dumps(labelstudio_tasks(picked), ensure_ascii=False, indent=1) + "\n",
            encoding="utf-8")
        (tmp / CONFIG_XML).write_text(labelstudio_config(labels), encoding="utf-8")
    return {name: out_dir / name for name in (REVIEW_CSV, TASKS_JSON, CONFIG_XML)}


# -- reading the labels back -------------------------------------------------------------------

@dataclass
class _Rows:
    """What a file said, before matching: one entry per labelled or unlabelled row."""

    fmt: str
    texts: list[str | None] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    stamps: list[str] = field(default_factory=list)

    def add(self, text: Any, ref: Any, label: str | None, stamp: Any = "") -> None:
        self.texts.append(text if isinstance(text, str) and text.strip() else None)
        self.ids.append(None if ref is None or (isinstance(ref, float) and np.isnan(ref))
                        or str(ref) == "" else str(ref))
        self.labels.append(label)
        self.stamps.append(str(stamp) if stamp else "")


def read_anchor(path: Path, labels: list[str], data: pd.DataFrame | None = None,
                from_name: str = FROM_NAME) -> pd.DataFrame:
    """Human labels from a file, as an anchor frame with columns id, text, text_hash, gold.

    Reads the review CSV filled in by hand (or any CSV/TSV/JSONL/JSON with `text` + `label`
    or `id` + `label`), Label Studio's JSON export (tasks with annotations: the latest
    non-cancelled one counts), its JSON-MIN export and its CSV export (`from_name` is the
    Choices control, "label" in the config `write_review` writes). Rows without a label are
    skipped and counted in `.attrs["skipped"]` (`.attrs["format"]` names the format read).
    Labels are matched to `labels` ignoring case and surrounding spaces; a text labelled twice
    keeps its latest label when the file has timestamps, else two different labels are an
    error. With `data` (the run's store) every text must be in it, matched by text hash, else
    by id, and none may be a test row; id, text and text_hash are then the store's.
    Raises DataError naming the problem and the fix. Parses JSON and CSV only: never eval or
    unpickle.
    """
    path = Path(path)
    rows = _read_rows(path, from_name)
    labelled = [i for i, lab in enumerate(rows.labels) if lab is not None]
    skipped = len(rows.labels) - len(labelled)
    if not labelled:
        raise DataError(f"{path} has no labelled rows ({skipped} without a label): label some "
                        f"texts (the {from_name!r} column or choice) and export or save again")
    gold = _canonical_labels([rows.labels[i] for i in labelled], labels, path)
    frame = pd.DataFrame({"text": [rows.texts[i] for i in labelled],
                          "ref": [rows.ids[i] for i in labelled], "gold": gold,
                          "stamp": [rows.stamps[i] for i in labelled]})
    frame["text"] = frame["text"].map(lambda t: clean_text(t) if t is not None else None)
    frame["text_hash"] = frame["text"].map(lambda t: text_hash(t) if t is not None else None)
    frame = _match(frame, data, path) if data is not None else _own_ids(frame, path)
    frame = _one_label_per_text(frame, path)
    out = frame[["id", "text", "text_hash", "gold"]].reset_index(drop=True)
    out.attrs.update({"skipped": skipped, "format": rows.fmt, "path": str(path)})
    logger.info("read %d labels from %s (%s; %d rows without a label skipped)", len(out), path,
                rows.fmt, skipped)
    return out


def _read_rows(path: Path, from_name: str) -> _Rows:
    """Dispatch on the file's suffix and shape."""
    if not path.is_file():
        raise DataError(f"anchor file {path} not found: check the path")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise DataError(f"anchor file {path}: unknown format {suffix!r}: give the review CSV or "
                        "a Label Studio export (.json, or .csv)")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"anchor file {path} is not UTF-8: re-save it as UTF-8") from None
    if not raw.strip():
        raise DataError(f"anchor file {path} is empty: fill the label column of review.csv, or "
                        "export the labelled project from Label Studio (JSON)")
    if suffix in (".csv", ".tsv"):
        return _flat(_read_csv(path, "\t" if suffix == ".tsv" else ","), path, from_name)
    try:
        if suffix == ".jsonl":
            records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            records = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"anchor file {path} is not valid JSON (line {e.lineno}): export it "
                        "from Label Studio again") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"anchor file {path} is not a list of tasks or rows: give a Label "
                        "Studio export (JSON or JSON-MIN) or a JSONL of text and label")
    if not records:
        raise DataError(f"anchor file {path} holds no tasks: export the labelled project from "
                        "Label Studio again")
    if all(isinstance(r.get("data"), dict) for r in records):
        return _tasks(records, path, from_name)
    return _flat(records, path, from_name)


def _read_csv(path: Path, sep: str) -> list[dict]:
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"anchor file {path} is empty: fill the label column of "
                        "review.csv") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"anchor file {path} cannot be read as CSV ({type(e).__name__}): "
                        "check its quoting, or export it again") from None
    if df.empty:
        raise DataError(f"anchor file {path} has a header but no rows: fill in review.csv "
                        "or export the labelled project again")
    return df.to_dict("records")


def _flat(records: list[dict], path: Path, from_name: str) -> _Rows:
    """Flat rows: the review CSV, any text/label table, Label Studio's JSON-MIN and CSV."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    label_studio = any(k in keys for k in _LS_META)
    fmt = ("label-studio-json-min" if path.suffix.lower() in (".json", ".jsonl")
           else "label-studio-csv") if label_studio else "table"
    if from_name not in keys:
        raise DataError(f"{path} has no {from_name!r} column (columns: "
                        f"{', '.join(map(str, keys[:12]))}): export the Label Studio project "
                        f"made from {CONFIG_XML}, or name the label column {from_name!r}")
    ref_key = ID_KEY if ID_KEY in keys else None
    if ref_key is None and not label_studio and "id" in keys:
        ref_key = "id"  # Label Studio's own rows carry its task id here, not ours
    if "text" not in keys and ref_key is None:
        raise DataError(f"{path} has neither a 'text' nor an 'id' column (columns: "
                        f"{', '.join(map(str, keys[:12]))}): keep review.csv's columns")
    rows = _Rows(fmt)
    for n, r in enumerate(records, start=1):
        label = _flat_label(r.get(from_name), path, n)
        rows.add(r.get("text"), r.get(ref_key) if ref_key else None, label,
                 r.get("updated_at") or r.get("created_at") or "")
    return rows


def _flat_label(value: Any, path: Path, n: int) -> str | None:
    """One cell's label: a string, or Label Studio's JSON for a multi-valued result."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if value[0] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return value
        else:
            return value
    if isinstance(value, dict):
        value = value.get("choices", value)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise DataError(f"{path}: row {n} holds {json.dumps(value, ensure_ascii=False)[:80]} rather "
                    "than one label: label each text with exactly one choice")


def _tasks(tasks: list[dict], path: Path, from_name: str) -> _Rows:
    """Label Studio's JSON export: tasks with `data` and `annotations`."""
    data_keys = list(dict.fromkeys(k for t in tasks for k in t["data"]))
    if "text" not in data_keys:
        raise DataError(f"{path}: the tasks have no 'text' field (data keys: "
                        f"{', '.join(map(str, data_keys[:8]))}): this is not a text project; "
                        f"export the Label Studio project made from {CONFIG_XML}")
    if not any("annotations" in t or "completions" in t for t in tasks):
        raise DataError(f"{path} holds tasks without annotations (the import file?): label them "
                        "in Label Studio, then export the project as JSON")
    rows = _Rows("label-studio-json")
    other_names: set[str] = set()
    other_types: set[str] = set()
    for n, task in enumerate(tasks, start=1):
        data = task["data"]
        ref = data.get(ID_KEY, data.get("id"))
        anns = [a for a in task.get("annotations", task.get("completions")) or []
                if isinstance(a, dict) and not a.get("was_cancelled") and not a.get("skipped")]
        if not anns:
            rows.add(data.get("text"), ref, None)
            continue
        latest = max(enumerate(anns), key=lambda ia: (_stamp(ia[1]), ia[0]))[1]
        found: list[str] = []
        for r in latest.get("result") or []:
            if not isinstance(r, dict):
                continue
            if r.get("from_name") == from_name:
                choices = (r.get("value") or {}).get("choices")
                if not isinstance(choices, list):
                    other_types.add(str(r.get("type")))
                    continue
                found.extend(str(c) for c in choices)
            elif str(r.get("type")).lower() == "choices":
                other_names.add(str(r.get("from_name")))
            else:
                other_types.add(str(r.get("type")))
        if len(found) > 1:
            raise DataError(f"{path}: task {task.get('id', n)} has {len(found)} labels "
                            f"{found[:4]}: label each text with exactly one choice")
        rows.add(data.get("text"), ref, found[0] if found else None, _stamp(latest))
    if all(lab is None for lab in rows.labels) and (other_names or other_types):
        where = (f"choices under {sorted(other_names)}" if other_names
                 else f"results of type {sorted(other_types)}")
        raise DataError(f"{path} holds {where}, not choices under {from_name!r}: it is another "
                        f"project's export; export the project made from {CONFIG_XML}")
    return rows


def _stamp(annotation: dict) -> str:
    return str(annotation.get("updated_at") or annotation.get("created_at") or "")


def _canonical_labels(found: list[str], labels: list[str], path: Path) -> list[str]:
    """Each label as spelled in the label set; case and surrounding spaces do not count."""
    exact = set(labels)
    folded: dict[str, str] = {}
    for lab in labels:
        folded[lab.strip().casefold()] = lab if lab.strip().casefold() not in folded else ""
    out, bad = [], []
    for value in found:
        v = value.strip()
        canon = v if v in exact else folded.get(v.casefold()) or None
        out.append(canon)
        if canon is None:
            bad.append(value)
    if bad:
        raise DataError(f"{path}: {len(bad)} label(s) outside the label set {labels} (first: "
                        f"{bad[0]!r}): correct them, or leave the label empty to skip the row")
    return out


def _match(frame: pd.DataFrame, data: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Resolve each row to a store row, by text hash, else by id; the store's values win."""
    hashes = (data["text_hash"].astype(str) if "text_hash" in data.columns
              else data["text"].astype(str).map(text_hash)).tolist()
    by_hash = {h: i for i, h in enumerate(hashes)}
    by_id = {str(v): i for i, v in enumerate(data["id"].astype(str))}
    pos = [by_hash.get(h) if h is not None else None for h in frame["text_hash"]]
    pos = [p if p is not None else by_id.get(r) if r is not None else None
           for p, r in zip(pos, frame["ref"], strict=True)]
    lost = [i for i, p in enumerate(pos) if p is None]
    if lost:
        first = frame["text"].iloc[lost[0]] or f"id {frame['ref'].iloc[lost[0]]}"
        raise DataError(f"{len(lost)} of {len(frame)} texts in {path} are not in the run's data "
                        f"(first: {first[:60]!r}): label texts from this run's review folder, "
                        "or give the run they come from")
    rows = data.iloc[pos]
    if "split" in data.columns:
        test = (rows["split"].astype(str) == "test").to_numpy()
        if test.any():
            first = rows["text"].astype(str).iloc[int(np.argmax(test))]
            raise DataError(f"{int(test.sum())} texts in {path} are test texts (first: "
                            f"{first[:60]!r}): the test split is the evaluation's gold; remove "
                            "them from the file")
    return frame.assign(id=rows["id"].astype(str).to_numpy(),
                        text=rows["text"].astype(str).to_numpy(),
                        text_hash=[hashes[p] for p in pos])


def _own_ids(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Without a store every row needs its text; ids come from the file, else the text hash."""
    if frame["text"].isna().any():
        n = int(frame["text"].isna().sum())
        raise DataError(f"{path}: {n} labelled rows have no text: keep the text column, or "
                        "match the ids against the run's store (data=)")
    ids = [r if r is not None else f"h{h}" for r, h in zip(frame["ref"], frame["text_hash"],
                                                           strict=True)]
    return frame.assign(id=ids)


def _one_label_per_text(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Rows of the same text: the latest when stamped, else they must agree."""
    frame = frame.reset_index(drop=True).assign(_pos=lambda f: np.arange(len(f)))
    stamped = frame.sort_values(["stamp", "_pos"], kind="mergesort")
    groups = stamped.groupby("text_hash", sort=False)
    conflicts = [h for h, g in groups if g["gold"].nunique() > 1 and (g["stamp"] == "").any()]
    if conflicts:
        g = frame[frame["text_hash"] == conflicts[0]]
        raise DataError(f"{path}: {len(conflicts)} texts have conflicting labels (first: "
                        f"{g['text'].iloc[0][:60]!r}: {sorted(set(g['gold']))}): keep one label "
                        "per text")
    last = stamped.drop_duplicates("text_hash", keep="last")
    return last.sort_values("_pos").drop(columns="_pos")


# -- the `llmdistill review` step ---------------------------------------------------------------

@dataclass
class ReviewResult:
    """What `review_run` wrote and from how many texts it picked."""

    out_dir: Path
    files: dict[str, Path]
    picked: int
    candidates: int  # training texts not excluded, all scored
    excluded: int  # training texts skipped: the trained anchor's, and those of `exclude` files
    reasons: dict[str, int]


def trained_anchor_ids(store: pd.DataFrame, student_dir: Path) -> set[str]:
    """The ids of the gold rows the student's anchor was sampled from the store, when it was.

    Their gold is already used; labelling them again adds nothing. Reproduces
    `pipeline.train`'s sample (the store's training rows, `student.noise.sample_anchor` with
    the recorded anchor size and seed).
    """
    from llmdistill.pipeline import train_split
    from llmdistill.student.noise import sample_anchor
    from llmdistill.student.record import StudentRecord

    record = StudentRecord.load_if_present(student_dir)
    size = int(((record and record.noise) or {}).get("anchor_size") or 0)
    if not size or "gold" not in store.columns or not store["gold"].notna().any():
        return set()
    trained = record.student_config or {}
    default = StudentConfig()
    seed = int(trained.get("seed", default.seed))
    rows = store[store["split"].astype(str) != "test"] if "split" in store.columns else store
    train, _ = train_split(rows, seed, float(trained.get("validation_fraction",
                                                         default.validation_fraction)))
    try:
        anchor = sample_anchor(train, int(trained.get("anchor_size", size)), seed)
    except DataError:
        return set()
    return set(anchor["id"].astype(str))


def predict_with_progress(clf: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """The student's probabilities for `texts`, with the Rich progress bar of long steps."""
    from llmdistill.annotate import progress_bar

    out = np.zeros((len(texts), len(clf.labels)))
    step = batch_size * 8  # each call sorts its texts by length; 8 batches keep that useful
    with progress_bar() as bar:
        task = bar.add_task("student predicting", total=len(texts), rate="")
        start = time.perf_counter()
        for i in range(0, len(texts), step):
            out[i:i + step] = clf.predict_proba(texts[i:i + step], batch_size=batch_size)
            done = min(i + step, len(texts))
            rate = done / max(time.perf_counter() - start, 1e-9)
            bar.update(task, completed=done, rate=f"{rate:.1f} texts/s")
    return out


def review_run(run_dir: Path, k: int = DEFAULT_K, out: Path | None = None,
               overwrite: bool = False, exclude: list[Path] | None = None,
               batch_size: int = StudentConfig().inference_batch_size) -> ReviewResult:
    """`llmdistill review`: load a run's store and student, pick `k` texts, write the folder.

    Skips the rows of the student's sampled anchor and the texts of the `exclude` files
    (labels of earlier rounds, read with `read_anchor`). Writes RUN_DIR/review unless `out`.
    """
    from llmdistill.annotate import read_annotations
    from llmdistill.student.predict import StudentClassifier

    if k < 1:
        raise UsageError(f"--k {k}: ask for at least 1 text to review")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"no such run folder: {run_dir}: give the folder `llmdistill run` wrote")
    out_dir = Path(out) if out else run_dir / "review"
    if not overwrite:
        refuse_existing(out_dir, "--out (or --overwrite)")
    store_path, student_dir = run_dir / "annotations.parquet", run_dir / "student"
    if not store_path.is_file():
        raise UsageError(f"{run_dir} has no annotations.parquet: give a folder that "
                         "`llmdistill run` wrote")
    if not (student_dir / "config.json").is_file():
        raise UsageError(f"{run_dir} has no trained student (student/config.json): let "
                         f"`llmdistill run` finish, or `llmdistill train --out {student_dir}`")
    store, manifest = read_annotations(store_path)
    labels = list(manifest["labels"])
    skip = trained_anchor_ids(store, student_dir)
    for f in exclude or []:
        skip |= set(read_anchor(Path(f), labels, data=store)["id"])
    pool = candidates(store, skip)
    if pool.empty:
        raise DataError(f"no texts to review in {run_dir}: every training text is excluded; "
                        "exclude fewer files")
    clf = StudentClassifier.load(student_dir)
    if sorted(clf.labels) != sorted(labels):
        raise UsageError(f"the student predicts {clf.labels} but the store's labels are "
                         f"{labels}: review with the student trained on this store")
    probs = predict_with_progress(clf, pool["text"].astype(str).tolist(), batch_size)
    probs = probs[:, [clf.labels.index(lab) for lab in labels]]
    picked = pick_for_review(pool, probs, labels, k)
    files = write_review(picked, out_dir, labels, overwrite=overwrite)
    counts: dict[str, int] = {}
    for text in picked["reasons"]:
        for reason in filter(None, text.split("; ")):
            key = "teacher failed" if reason.startswith("teacher failed") else reason
            counts[key] = counts.get(key, 0) + 1
    return ReviewResult(out_dir, files, len(picked), len(pool), len(candidates(store)) - len(pool),
                        counts)
