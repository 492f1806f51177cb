"""What every teacher gives: per-class probabilities for a text, with a status and its cost.

Local causal LMs share one mechanism (`PrefixScorer`): evaluate the prompt prefix once, then for
each text evaluate only the text and the suffix, and read the label words' probabilities from the
next-token distribution. When the labels' first tokens collide, each label's whole token
sequence is scored instead.

Multi-label (`prompt.task == "multi_label"`): the text is evaluated once, then for each label
only its yes/no question and the suffix, from the KV cache cut back to the end of the text;
probs[j] = P(yes) / (P(yes) + P(no)), each pooled over the spellings of yes and no.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmdistill.errors import TeacherError
from llmdistill.teachers.prompts import Prompt, label_variants

STATUSES = ("ok", "off_label", "unparseable", "refused", "error")
CHARS_PER_TOKEN = 4  # the context check's estimate of a max_text_chars text's tokens
YES, NO = "yes", "no"


@dataclass
class Annotation:
    """One text's outcome. `probs` follows the teacher's label order; None unless status is ok.

    Single-label: probs sum to 1. Multi-label: probs[j] is the independent probability that
    label j applies. `truncated`: the teacher saw only the start of the text (cut at
    `max_text_chars` characters or `max_text_tokens` tokens).
    """

    probs: list[float] | None
    status: str
    seconds: float
    label_mass: float | None = None  # probability the model put on any label spelling
    raw: str | None = None
    tokens: int = 0
    cost: float = 0.0  # dollars, for priced API teachers
    truncated: bool = False


class Teacher(ABC):
    """A labeller: what every backend provides.

    - `id`: the model's identity in the cache key; it must name the whole model (a hub id, a
      URL plus model, or a file's name plus a content fingerprint), never a bare basename.
    - `prompt_hash`: identity of everything else that changes answers (prompt, decoding).
    - `labels`: the label set, in the order of `Annotation.probs`.
    - `info`: a JSON-able dict for manifests (backend, model, settings).
    - `prompt`: the rendered `Prompt` for manifests, or None when there is none (replay).
    - `task`: the task type its probabilities answer (`llmdistill.tasks`): `single_label`
      (they sum to 1) or `multi_label` (one independent probability per label).
    """

    id: str
    labels: list[str]
    prompt_hash: str
    info: dict
    prompt: Prompt | None = None
    task: str = "single_label"
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

    The task is `prompt.task`. `max_text_tokens` (None: off) keeps a text's first tokens only
    (after `max_text_chars`); `n_ctx` (None: unchecked) is the context the prompt must fit with
    the longest text, checked before the prefix is evaluated.
    """

    def __init__(self, labels: list[str], prompt: Prompt, max_text_chars: int, *,
                 max_text_tokens: int | None = None, n_ctx: int | None = None) -> None:
        self.labels = labels
        self.prompt = prompt
        self.task = prompt.task
        self.multi = prompt.task != "single_label"
        self.prompt_hash = prompt.hash
        if max_text_tokens is not None:  # what of a long text is read: part of the identity
            blob = json.dumps([prompt.hash, {"max_text_tokens": max_text_tokens,
                                             "max_text_chars": max_text_chars}])
            self.prompt_hash = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.max_text_chars = max_text_chars
        self.max_text_tokens = max_text_tokens
        if self.multi:  # label names are only read in the questions: yes and no are scored
            self._label_tokens: list[_LabelTokens] = []
            self._yes_no = self._yes_no_sequences()
            self._yes_no_whole = _collide(self._yes_no)
            self.whole_sequences = self._yes_no_whole
            self._between = self._tokenize(prompt.between, special=True)
            self._questions = [self._tokenize(q + prompt.suffix, special=True)
                               for q in prompt.questions]
            if len(self._questions) != len(labels):
                raise TeacherError(f"the multi-label prompt has {len(self._questions)} "
                                   f"questions for {len(labels)} labels: render it with "
                                   "render_prompt(..., task='multi_label')")
        else:
            self._label_tokens = self._label_sequences(labels)
            self.whole_sequences = _collide(self._label_tokens)
        self._prefix = self._tokenize(prompt.prefix, special=True, bos=True)
        if n_ctx is not None:
            self._check_context(n_ctx)
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

    def _yes_no_sequences(self) -> list[_LabelTokens]:
        """The spellings of yes and no (" yes", "Yes", …) as token sequences, yes first."""
        try:
            return self._label_sequences([YES, NO])
        except TeacherError:
            raise TeacherError("this teacher's tokenizer gives 'yes' and 'no' the same tokens, "
                               "so it cannot answer multi-label questions: use another "
                               "teacher") from None

    def _check_context(self, n_ctx: int) -> None:
        """A one-line TeacherError when the prefix and the longest text cannot fit in n_ctx."""
        text = (self.max_text_tokens if self.max_text_tokens is not None
                else math.ceil(self.max_text_chars / CHARS_PER_TOKEN))
        if self.multi:
            answer = max(len(s) for lt in self._yes_no for s in lt.sequences)
            tail = len(self._between) + max(len(q) for q in self._questions)
        else:
            answer = max(len(s) for lt in self._label_tokens for s in lt.sequences)
            tail = len(self._tokenize(self.prompt.suffix, special=True))
        needed = len(self._prefix) + text + tail + answer
        if needed > n_ctx:
            raise TeacherError(
                f"the prompt needs about {needed} tokens ({len(self._prefix)} for the "
                f"instructions, {len(self.labels)} label descriptions and "
                f"{len(self.prompt.demos)} demos, {text} for a text, {tail + answer} after it) "
                f"but teacher.n_ctx is {n_ctx}: shorten or drop label descriptions, use fewer "
                "demos (teacher.n_demos), set teacher.max_text_tokens, or raise teacher.n_ctx")

    @abstractmethod
    def _tokenize(self, text: str, special: bool, bos: bool = False) -> list[int]: ...

    @abstractmethod
    def _reset_to(self, n_tokens: int) -> None: ...

    @abstractmethod
    def _eval(self, tokens: list[int]) -> np.ndarray: ...

    def label_probs(self, texts: list[str]) -> list[Annotation]:
        return [self._one(t) for t in texts]

    def _body(self, text: str, tail: str) -> tuple[list[int], bool]:
        """The text's tokens followed by `tail`'s, cut to max_text_chars / max_text_tokens, and
        whether it was cut. Without max_text_tokens, text and tail are tokenized together."""
        cut = text[: self.max_text_chars]
        truncated = len(cut) < len(text)
        if self.max_text_tokens is not None:
            ids = self._tokenize(cut, special=True)
            if len(ids) > self.max_text_tokens:
                return ids[: self.max_text_tokens] + self._tokenize(tail, special=True), True
        return self._tokenize(cut + tail, special=True), truncated

    def _one(self, text: str) -> Annotation:
        if self.multi:
            return self._one_multi(text)
        start = time.perf_counter()
        try:
            body, truncated = self._body(text, self.prompt.suffix)
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
                          label_mass=mass, tokens=len(body), truncated=truncated)

    def _one_multi(self, text: str) -> Annotation:
        """The text once, then per label its question from the cache cut back to the text."""
        start = time.perf_counter()
        try:
            body, truncated = self._body(text, self.prompt.between)
            self._reset_to(len(self._prefix))
            self._eval(body)
            end = len(self._prefix) + len(body)
            probs, mass, tokens = [], 0.0, len(body)
            for question in self._questions:
                self._reset_to(end)
                logp = self._eval(question)
                yes, no = self._score(logp, end + len(question), self._yes_no,
                                      self._yes_no_whole)
                probs.append(float(0.5 * (1.0 + math.tanh(0.5 * (yes - no)))))  # sigmoid
                mass += float(np.exp(yes) + np.exp(no))
                tokens += len(question)
        except Exception as e:  # a backend failure on one text is recorded, not fatal
            self._reset_to(len(self._prefix))
            return Annotation(None, "error", time.perf_counter() - start, raw=repr(e)[:500])
        return Annotation(probs, "ok", time.perf_counter() - start,
                          label_mass=mass / len(self._questions), tokens=tokens,
                          truncated=truncated)

    def _score(self, logp: np.ndarray, n_ctx: int, table: list[_LabelTokens] | None = None,
               whole: bool | None = None) -> np.ndarray:
        """Log-probability of each label (or of each entry of `table`, e.g. yes and no), its
        spellings pooled (log-sum-exp); `whole`: score whole sequences, not first tokens."""
        table = self._label_tokens if table is None else table
        whole = self.whole_sequences if whole is None else whole
        out = np.empty(len(table))
        for i, lt in enumerate(table):
            if not whole:
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


def _collide(table: list[_LabelTokens]) -> bool:
    """True when two entries' spellings share a first token (score whole sequences then)."""
    firsts = [{s[0] for s in lt.sequences} for lt in table]
    return any(firsts[i] & firsts[j] for i in range(len(firsts))
               for j in range(i + 1, len(firsts)))


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
