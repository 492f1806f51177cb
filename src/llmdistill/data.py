"""Texts in, a clean frame out: loading, label sets, cleaning and deterministic splits.

Every frame this module returns has the columns `id`, `text` and, when gold exists, `label`
(a string from the label set).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import ftfy
import pandas as pd
from sklearn.model_selection import train_test_split

from llmdistill import assets
from llmdistill.config import DataConfig
from llmdistill.errors import DataError, UsageError

SPLITS = ("train", "validation", "test")

# The tweets file was saved through a Mac Roman round trip that ftfy cannot undo; these are the
# sequences whose meaning is certain (typographic quotes and the ellipsis of truncated retweets).
_TWEETS_MOJIBAKE = {
    "äó_": "…", "äó»": "’", "äóì": "“", "äó\x9d": "”",
    "Õ¢_\x8aÎ_\x86¢": "’", "Õ¢_\x8aÎ\x81Ð": "“", "Õ¢_\x8aÎë\x9d": "”",
}
_WS = re.compile(r"\s+")


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


def read_table(path: str | Path, text_column: str = "text", label_column: str | None = "label",
               labels: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV/JSONL/Parquet file into `id`, `text` and (if present) `label` columns."""
    path = Path(path)
    df = read_frame(path)
    if text_column not in df.columns:
        raise DataError(f"{path} has no text column {text_column!r} (columns: "
                        f"{', '.join(map(str, df.columns))}): pass --text-column")
    out = pd.DataFrame({"text": df[text_column].astype(str).map(clean_text)})
    empty = out["text"].str.len() == 0
    if empty.any():
        first = int(empty.idxmax()) + 1
        raise DataError(f"{path}: {int(empty.sum())} empty or whitespace texts (first at row "
                        f"{first}): remove them")
    out["id"] = df["id"].astype(str) if "id" in df.columns else [
        f"r{i}" for i in range(len(df))]
    if label_column and label_column in df.columns:
        out["label"] = df[label_column].astype(str).str.strip()
        check_labels(out, labels, str(path))
    return out[[c for c in ("id", "text", "label") if c in out.columns]]


def check_labels(df: pd.DataFrame, labels: list[str] | None, where: str) -> list[str]:
    """Check gold labels against the label set; return the label set (sorted if inferred)."""
    found = sorted(df["label"].unique()) if "label" in df.columns else []
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


def load_tweets() -> pd.DataFrame:
    """The embedded `tweets` corpus: repaired, deduplicated, conflicts dropped."""
    raw = pd.read_csv(assets.tweets_csv(), encoding="latin-1", dtype={"text": str})
    df = pd.DataFrame({"text": raw["text"].astype(str).map(clean_text),
                       "label": raw["sentiment"].astype(str).str.strip()})
    df = df[df["text"].str.len() > 0]
    n_labels = df.groupby("text")["label"].nunique()
    df = df[df["text"].map(n_labels) == 1].drop_duplicates("text")
    df["id"] = df["text"].map(lambda t: "tw" + text_hash(t)[:12])
    return df[["id", "text", "label"]].reset_index(drop=True)


def split_frame(df: pd.DataFrame, cfg: DataConfig) -> dict[str, pd.DataFrame]:
    """Seeded, stratified train/validation/test split, independent of the input's row order."""
    df = df.assign(_key=df["text"].map(text_hash)).sort_values("_key").drop(columns="_key")
    df = df.reset_index(drop=True)
    strat = df["label"] if "label" in df.columns else None
    rest, test = train_test_split(df, test_size=cfg.test_fraction, random_state=cfg.split_seed,
                                  stratify=strat)
    val_share = cfg.validation_fraction / (1 - cfg.test_fraction)
    train, val = train_test_split(rest, test_size=val_share, random_state=cfg.split_seed,
                                  stratify=rest["label"] if strat is not None else None)
    return {"train": train, "validation": val, "test": test}


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded stratified subsample of at most n rows (all of them when n is None)."""
    if n is None or n >= len(df):
        return df.reset_index(drop=True)
    strat = df["label"] if "label" in df.columns and df["label"].value_counts().min() > 1 else None
    part, _ = train_test_split(df, train_size=n, random_state=seed, stratify=strat)
    return part.reset_index(drop=True)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The configured source, split and subsampled as the config says."""
    if cfg.source == "tweets":
        full = load_tweets()
    else:
        full = read_table(cfg.source, cfg.text_column, cfg.label_column, cfg.labels)
        if "label" not in full.columns:
            raise DataError(f"{cfg.source} has no label column {cfg.label_column!r}: a run needs "
                            "gold labels to split and evaluate; pass --label-column")
        dup = full["text"].duplicated()
        full = full[~dup]
    labels = check_labels(full, cfg.labels, cfg.source)
    whole = split_frame(full, cfg)
    caps = {"train": cfg.max_train, "validation": cfg.max_validation, "test": cfg.max_test}
    splits = {k: subsample(v, caps[k], cfg.split_seed) for k, v in whole.items()}
    manifest = {
        "source": cfg.source,
        "rows_after_cleaning": len(full),
        "split_seed": cfg.split_seed,
        "full_split_sizes": {k: len(v) for k, v in whole.items()},
        "used_split_sizes": {k: len(v) for k, v in splits.items()},
        "hashes": {k: frame_hash(v) for k, v in splits.items()},
        "labels": labels,
    }
    pool = whole["train"][~whole["train"]["id"].isin(splits["train"]["id"])]
    return Dataset(splits=splits, labels=labels, manifest=manifest,
                   pool=pool[["id", "text"]].reset_index(drop=True))


def resolve(spec: str, cfg: DataConfig | None = None) -> tuple[pd.DataFrame, list[str]]:
    """DATA on the command line: a file path, or an embedded split such as `tweets:test`."""
    cfg = cfg or DataConfig()
    if ":" in spec and not Path(spec).exists():
        name, split = spec.split(":", 1)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} in {spec!r}: use one of {', '.join(SPLITS)}")
        ds = load_dataset(cfg.model_copy(update={"source": name}))
        return ds.splits[split], ds.labels
    df = read_table(spec, cfg.text_column, cfg.label_column, cfg.labels)
    labels = check_labels(df, cfg.labels, spec) if "label" in df.columns or cfg.labels else []
    return df, labels
