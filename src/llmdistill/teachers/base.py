"""What every teacher gives: per-class probabilities for a text, with a status and its cost.

Local causal LMs share one mechanism (`PrefixScorer`): evaluate the prompt prefix once, then for
each text evaluate only the text and the suffix, and read the label words' probabilities from the
next-token distribution. When the labels' first tokens collide, each label's whole token
sequence is scored instead.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmdistill.errors import TeacherError
from llmdistill.teachers.prompts import Prompt, label_variants

STATUSES = ("ok", "off_label", "unparseable", "refused", "error")


@dataclass
class Annotation:
    """One text's outcome. `probs` follows the teacher's label order; None unless status is ok."""

    probs: list[float] | None
    status: str
    seconds: float
    label_mass: float | None = None  # probability the model put on any label spelling
    raw: str | None = None
    tokens: int = 0
    cost: float = 0.0  # dollars, for priced API teachers


class Teacher(ABC):
    """A labeller: what every backend provides.

    - `id`: the model's identity in the cache key; it must name the whole model (a hub id, a
      URL plus model, or a file's name plus a content fingerprint), never a bare basename.
    - `prompt_hash`: identity of everything else that changes answers (prompt, decoding).
    - `labels`: the label set, in the order of `Annotation.probs`.
    - `info`: a JSON-able dict for manifests (backend, model, settings).
    - `prompt`: the rendered `Prompt` for manifests, or None when there is none (replay).
    """

    id: str
    labels: list[str]
    prompt_hash: str
    info: dict
    prompt: Prompt | None = None
    batch_size: int = 8  # texts per label_probs call: the unit of progress and of commits
    spent: float = 0.0  # dollars so far

    def over_budget(self) -> bool:
        """True once a configured spending cap is reached (API teachers)."""
        return False

    def estimate(self, texts: list[str]) -> dict:
        """--dry-run: what labelling `texts` would cost. Local teachers cost no dollars."""
        return {"texts": len(texts), "dollars": 0.0, "note": f"{self.id} runs locally"}

    @abstractmethod
    def label_probs(self, texts: list[str]) -> list[Annotation]:
        """Score each text; never raise for one bad text (return status "error" instead)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model."""


@dataclass
class _LabelTokens:
    label: str
    sequences: list[list[int]] = field(default_factory=list)


class PrefixScorer(Teacher):
    """Label scoring on a causal LM that can keep a prompt prefix's KV cache.

    Backends implement `_tokenize`, `_reset_to(n)` (keep the first n evaluated tokens) and
    `_eval(tokens)` (append tokens, return the log-softmax at the last position).
    """

    def __init__(self, labels: list[str], prompt: Prompt, max_text_chars: int) -> None:
        self.labels = labels
        self.prompt = prompt
        self.prompt_hash = prompt.hash
        self.max_text_chars = max_text_chars
        self._label_tokens = self._label_sequences(labels)
        firsts = [{s[0] for s in lt.sequences} for lt in self._label_tokens]
        self.whole_sequences = any(firsts[i] & firsts[j] for i in range(len(firsts))
                                   for j in range(i + 1, len(firsts)))
        self._prefix = self._tokenize(prompt.prefix, special=True, bos=True)
        self._reset_to(0)
        self._eval(self._prefix)
        self._text_logprobs: np.ndarray | None = None

    def _label_sequences(self, labels: list[str]) -> list[_LabelTokens]:
        """Each label's spellings as token sequences; a sequence two labels share is dropped."""
        seqs = {lab: {tuple(self._tokenize(v, special=False)) for v in label_variants(lab)} - {()}
                for lab in labels}
        out = []
        for lab in labels:
            shared = set().union(*(seqs[o] for o in labels if o != lab))
            own = sorted(seqs[lab] - shared)
            if not own:
                raise TeacherError(f"label {lab!r} tokenizes to the same sequence as another "
                                   "label for this teacher: rename one of them")
            out.append(_LabelTokens(lab, [list(s) for s in own]))
        return out

    @abstractmethod
    def _tokenize(self, text: str, special: bool, bos: bool = False) -> list[int]: ...

    @abstractmethod
    def _reset_to(self, n_tokens: int) -> None: ...

    @abstractmethod
    def _eval(self, tokens: list[int]) -> np.ndarray: ...

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        return [self._one(t) for t in texts]

    def _one(self, text: str) -> Annotation:
        start = time.perf_counter()
        try:
            body = self._tokenize(text[: self.max_text_chars] + self.prompt.suffix, special=True)
            self._reset_to(len(self._prefix))
            logp = self._eval(body)
            scores = self._score(logp, len(self._prefix) + len(body))
        except Exception as e:  # a backend failure on one text is recorded, not fatal
            self._reset_to(len(self._prefix))
            return Annotation(None, "error", time.perf_counter() - start, raw=repr(e)[:500])
        mass = float(np.exp(scores).sum())
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        return Annotation([float(p) for p in probs], "ok", time.perf_counter() - start,
                          label_mass=mass, tokens=len(body))

    def _score(self, logp: np.ndarray, n_ctx: int) -> np.ndarray:
        """Log-probability of each label, its spellings pooled (log-sum-exp)."""
        out = np.empty(len(self._label_tokens))
        for i, lt in enumerate(self._label_tokens):
            if not self.whole_sequences:
                firsts = sorted({s[0] for s in lt.sequences})
                out[i] = np.logaddexp.reduce(logp[firsts])
                continue
            seq_scores = []
            for seq in lt.sequences:
                total = float(logp[seq[0]])
                for k in range(1, len(seq)):
                    self._reset_to(n_ctx + k - 1)
                    total += float(self._eval([seq[k - 1]])[seq[k]])
                seq_scores.append(total)
            out[i] = np.logaddexp.reduce(seq_scores)
        return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    m = logits.max()
    return logits - m - np.log(np.exp(logits - m).sum())


def file_fingerprint(path: Path) -> str:
    """Cheap identity of a model file (size + first and last MiB) for cache keys."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def model_fingerprint(path: Path) -> str:
    """`file_fingerprint` of a file, or of a model folder: its top-level files' names and
    fingerprints (what `from_pretrained` reads; subfolders such as checkpoints are not)."""
    if path.is_file():
        return file_fingerprint(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.name}\0{file_fingerprint(f)}\0".encode())
    return h.hexdigest()[:12]
