"""The `tfidf` student: word n-grams (1..word_ngrams) and char_wb n-grams (2..char_ngrams),
TF-IDF with sublinear tf, into the soft-label logistic-regression head (`student/heads.py`).

The folder holds `tfidf.vocab.json` (each vectorizer's settings and vocabulary), `tfidf.safetensors`
(their idf weights), `head.safetensors`, README.md and llmdistill.json; `load` rebuilds the same
scikit-learn vectorizers from them, so a loaded folder predicts exactly what training did.
Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from llmdistill.config import StudentConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.student.heads import (
    HEAD_FILE,
    HeadClassifier,
    LinearHead,
    limit_threads,
    load_record,
    train_head_student,
)

if TYPE_CHECKING:
    from llmdistill.student.targets import TrainResult

KIND = "tfidf"
BACKEND = "numpy-tfidf"
SPEC_FILE = "tfidf.vocab.json"
IDF_FILE = "tfidf.safetensors"
FORMAT = 1


def vectorizer_specs(cfg: StudentConfig) -> list[dict[str, Any]]:
    """The settings of each vectorizer `cfg.tfidf` asks for (JSON-ready, saved with the model)."""
    t = cfg.tfidf
    if t.char_ngrams == 1:
        raise UsageError("student.tfidf.char_ngrams is 1, but character n-grams start at 2: "
                         "set it to 0 (none) or to 2 or more")
    common = {"lowercase": True, "sublinear_tf": True, "norm": "l2", "use_idf": True,
              "smooth_idf": True, "max_features": t.max_features}
    specs = [{"name": "word", "analyzer": "word", "ngram_range": [1, t.word_ngrams],
              "token_pattern": r"(?u)\b\w\w+\b", **common}]
    if t.char_ngrams:
        specs.append({"name": "char", "analyzer": "char_wb", "ngram_range": [2, t.char_ngrams],
                      **common})
    return specs


def _vectorizer(spec: dict[str, Any], vocabulary: dict[str, int] | None = None):
    """The scikit-learn TfidfVectorizer of `spec` (fitted later, or given its vocabulary)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    kwargs = {k: v for k, v in spec.items() if k not in ("name", "ngram_range")}
    return TfidfVectorizer(ngram_range=tuple(spec["ngram_range"]), dtype=np.float32,
                           vocabulary=vocabulary, **kwargs)


class TfidfFeatures:
    """The fitted vectorizers: texts → one sparse row of hstacked TF-IDF features."""

    base_model = None

    def __init__(self, specs: list[dict[str, Any]], vectorizers: list[Any]) -> None:
        self.specs = specs
        self.vectorizers = vectorizers

    @classmethod
    def fit(cls, specs: list[dict[str, Any]], texts: list[str]) -> TfidfFeatures:
        vectorizers = []
        for spec in specs:
            v = _vectorizer(spec)
            try:
                v.fit(texts)
            except ValueError as e:  # "empty vocabulary": no text has a token of 2+ characters
                raise DataError(f"the training texts give the {spec['name']} TF-IDF nothing to "
                                f"count ({e}): check the text column") from None
            vectorizers.append(v)
        return cls(specs, vectorizers)

    @property
    def dims(self) -> list[int]:
        return [len(v.vocabulary_) for v in self.vectorizers]

    @property
    def parameters(self) -> int:
        return int(sum(self.dims))  # the idf weights

    @property
    def info(self) -> dict[str, Any]:
        return {"vectorizers": [f"{s['analyzer']} {s['ngram_range'][0]}-{s['ngram_range'][1]}"
                                for s in self.specs], "features": self.dims}

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        parts = [v.transform(texts) for v in self.vectorizers]
        return sp.hstack(parts, format="csr") if len(parts) > 1 else parts[0].tocsr()

    def save(self, folder: Path) -> None:
        """tfidf.vocab.json (settings, vocabularies) and tfidf.safetensors (idf weights)."""
        entries = [{"spec": s, "vocabulary": {t: int(i) for t, i in v.vocabulary_.items()}}
                   for s, v in zip(self.specs, self.vectorizers, strict=True)]
        (Path(folder) / SPEC_FILE).write_text(
            json.dumps({"format": FORMAT, "vectorizers": entries}, ensure_ascii=False),
            encoding="utf-8")
        save_file({s["name"]: np.ascontiguousarray(v.idf_, dtype=np.float64)
                   for s, v in zip(self.specs, self.vectorizers, strict=True)},
                  str(Path(folder) / IDF_FILE))

    @classmethod
    def load(cls, folder: Path) -> TfidfFeatures:
        """Rebuild the fitted vectorizers from tfidf.vocab.json and tfidf.safetensors."""
        folder = Path(folder)
        try:
            saved = json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
            idf = load_file(str(folder / IDF_FILE))
            specs, vectorizers = [], []
            for entry in saved["vectorizers"]:
                spec, vocab = entry["spec"], entry["vocabulary"]
                v = _vectorizer(spec, vocab)
                v.idf_ = idf[spec["name"]]
                specs.append(spec)
                vectorizers.append(v)
        except Exception as e:  # any broken file (JSON, safetensors, keys, sizes) means one fix
            raise UsageError(f"{folder}'s {SPEC_FILE}/{IDF_FILE} are unreadable "
                             f"({type(e).__name__}): retrain the student or restore them"
                             ) from None
        if saved.get("format") != FORMAT:
            raise UsageError(f"{folder / SPEC_FILE} has format {saved.get('format')!r}, this "
                             f"llmdistill reads {FORMAT}: retrain the student")
        return cls(specs, vectorizers)


def train(train: pd.DataFrame, validation: pd.DataFrame, labels: list[str], cfg: StudentConfig,
          out_dir: Path, manifest: dict | None = None, *, anchor: pd.DataFrame | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train the tfidf student into `out_dir` (see `heads.train_head_student` for the result's
    fields: best_epoch is the 1-based position of the chosen C in `student.head_c`).

    The vectorizers are fitted on the training texts only (validation picks C).
    """
    specs = vectorizer_specs(cfg)  # a bad setting is refused before any data work
    return train_head_student(KIND, lambda texts: TfidfFeatures.fit(specs, texts), train,
                              validation, labels, cfg, out_dir, manifest, anchor=anchor,
                              overwrite=overwrite)


def load(model_dir: str | Path, threads: int | None = None) -> HeadClassifier:
    """A trained tfidf folder as a classifier (`predict_proba`, `predict`, `labels`, ...)."""
    model_dir = Path(model_dir)
    record = load_record(model_dir, KIND, [SPEC_FILE, IDF_FILE, HEAD_FILE])
    limit_threads(threads)
    features = TfidfFeatures.load(model_dir)
    head = LinearHead.load(model_dir, record.labels, dim=sum(features.dims))
    return HeadClassifier(record.labels, features, head, BACKEND, max_length=None,
                          task=record.task, thresholds=record.threshold_array)
