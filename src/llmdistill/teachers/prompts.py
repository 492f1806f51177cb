"""The teacher's prompt: instructions, label descriptions and demos, rendered so that the next
token the model writes is the answer.

The prompt is cut around the text into a prefix (everything before it: system message and demos,
identical for every text, so its KV cache is computed once) and a short suffix.

Multi-label prompts (`task="multi_label"`) say that any number of labels may apply, and the user
turn ends with one yes/no question per label (`TeacherConfig.label_question`): the prompt is cut
around the text and around the question, so a local teacher evaluates the text once and then
only each label's question and the suffix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.tasks import SEP, get_task

_MARK = "@@LLMDISTILL_TEXT@@"
_QMARK = "@@LLMDISTILL_QUESTION@@"
SINGLE = "single_label"
# multi_label answer styles: one yes/no question per label (local scorers, openai logprobs), or
# one JSON list of the labels that apply (openai votes and reasoning)
YES_NO, LIST = "yes_no", "list"
MULTI_LABEL_INSTRUCTION = ("Any number of these labels may apply to a text: one, several or "
                           "none.")
MULTI_ANSWER = {
    YES_NO: "You are asked about one label at a time: answer with one word, yes or no.",
    LIST: "Answer with a JSON list of the labels that apply, e.g. {example}, or [] when none "
          "does.",
}


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt cut around the text: `prefix` + text + `suffix` (single-label), or
    `prefix` + text + `between` + one of `questions` + `suffix` (multi-label, one question per
    label in label order)."""

    prefix: str
    suffix: str
    demos: list[dict]  # {"id", "text", "label"} from the training split
    task: str = SINGLE
    between: str = ""
    questions: tuple[str, ...] = ()

    @property
    def hash(self) -> str:
        """Identity of the prompt; the task and the questions are part of it for multi-label,
        so single- and multi-label answers never share cache entries."""
        parts: list = [self.prefix, self.suffix]
        if self.task != SINGLE:
            parts = [self.task, self.prefix, self.between, self.suffix, list(self.questions)]
        blob = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def system_message(cfg: TeacherConfig, labels: list[str], task: str = SINGLE,
                   style: str = YES_NO) -> str:
    """Instructions and one description per label; the answer format depends on the task."""
    lines = [cfg.task, "", "Labels:"]
    lines += [f"- {lab}: {cfg.label_descriptions.get(lab, lab)}" for lab in labels]
    if get_task(task).exclusive:
        lines += ["", f"Answer with exactly one word: {', '.join(labels)}."]
    else:
        example = json.dumps(labels[:2], ensure_ascii=False)
        lines += ["", MULTI_LABEL_INSTRUCTION, MULTI_ANSWER[style].format(example=example)]
    return "\n".join(lines)


def user_message(text: str) -> str:
    return f"Text: {text}"


def demo_answer(label: str, task: str = SINGLE, style: str = YES_NO) -> str:
    """What the assistant says after a demo: its label, or (multi-label) the labels that apply,
    as `Labels: a, b` / `Labels: none` (yes/no style) or a JSON list (list style)."""
    if get_task(task).exclusive:
        return label
    chosen = get_task(task).split(label)
    if style == LIST:
        return json.dumps(chosen, ensure_ascii=False)
    return "Labels: " + (", ".join(chosen) if chosen else "none")


def label_questions(cfg: TeacherConfig, labels: list[str]) -> list[str]:
    """`cfg.label_question` filled in for each label (its name and description)."""
    try:
        return [cfg.label_question.format(label=lab,
                                          description=cfg.label_descriptions.get(lab, lab))
                for lab in labels]
    except (KeyError, IndexError, ValueError) as e:
        raise TeacherError(f"teacher.label_question {cfg.label_question!r} cannot be filled in "
                           f"({type(e).__name__}: {e}): use only {{label}} and {{description}}, "
                           "and double any other brace") from None


def pick_demos(train: pd.DataFrame, labels: list[str], n: int, seed: int,
               task: str = SINGLE) -> list[dict]:
    """n demos from the training split, as balanced over labels as n allows, in a seeded order.

    Multi-label: label j's pool is the rows whose label set holds j, each pool in a seeded
    order; a row in several pools is picked once (the next one of the pool is taken)."""
    if n <= 0 or "label" not in train.columns:
        return []
    if not get_task(task).exclusive:
        return _pick_multi(train, labels, n, seed)
    per = [train[train["label"] == lab] for lab in labels]
    picks: list[pd.Series] = []
    for i in range(n):
        pool = per[i % len(labels)]
        k = i // len(labels)
        if k < len(pool):
            picks.append(pool.sample(n=k + 1, random_state=seed).iloc[k])
    order = pd.DataFrame(picks).sample(frac=1.0, random_state=seed)
    return [{"id": r.id, "text": r.text, "label": r.label} for r in order.itertuples()]


def _pick_multi(train: pd.DataFrame, labels: list[str], n: int, seed: int) -> list[dict]:
    sets = train["label"].map(lambda v: set(str(v).split(SEP)) if isinstance(v, str) else set())
    pools = [list(train[sets.map(lambda s, lab=lab: lab in s)]
                  .sample(frac=1.0, random_state=seed).itertuples()) for lab in labels]
    seen: set = set()
    picks = []
    for i in range(n):
        pool = pools[i % len(labels)]
        while pool and pool[0].id in seen:
            pool.pop(0)
        if pool:
            row = pool.pop(0)
            seen.add(row.id)
            picks.append(row)
    order = pd.Series(range(len(picks))).sample(frac=1.0, random_state=seed)
    return [{"id": picks[i].id, "text": picks[i].text, "label": picks[i].label} for i in order]


def build_messages(cfg: TeacherConfig, labels: list[str], demos: list[dict],
                   text: str, task: str = SINGLE, question: str | None = None,
                   style: str = YES_NO) -> list[dict]:
    """The chat: system message, the demos (user text, assistant answer) and the text; with a
    `question` (multi-label, yes/no style) the last user turn ends with it."""
    msgs = [{"role": "system", "content": system_message(cfg, labels, task, style)}]
    for d in demos:
        msgs += [{"role": "user", "content": user_message(d["text"])},
                 {"role": "assistant", "content": demo_answer(d["label"], task, style)}]
    last = user_message(text) if question is None else f"{user_message(text)}\n\n{question}"
    return msgs + [{"role": "user", "content": last}]


def render_prompt(cfg: TeacherConfig, labels: list[str], demos: list[dict],
                  apply_template: Callable[[list[dict]], str], task: str = SINGLE) -> Prompt:
    """Render the chat with a marker in place of the text and cut it there.

    Multi-label: a second marker stands for the label question, so the prompt is cut into
    prefix, text, `between`, question, suffix; the questions are `label_questions(cfg, labels)`.
    """
    if get_task(task).exclusive:
        rendered = apply_template(build_messages(cfg, labels, demos, _MARK))
        if rendered.count(_MARK) != 1:
            raise ValueError("the chat template must render the user text exactly once")
        prefix, suffix = rendered.split(_MARK)
        return Prompt(prefix=prefix, suffix=suffix, demos=demos)
    rendered = apply_template(build_messages(cfg, labels, demos, _MARK, task, question=_QMARK))
    if (rendered.count(_MARK) != 1 or rendered.count(_QMARK) != 1
            or rendered.index(_QMARK) < rendered.index(_MARK)):
        raise ValueError("the chat template must render the user text, then the question, "
                         "exactly once")
    prefix, rest = rendered.split(_MARK)
    between, suffix = rest.split(_QMARK)
    return Prompt(prefix=prefix, suffix=suffix, demos=demos, task=task, between=between,
                  questions=tuple(label_questions(cfg, labels)))


def label_variants(label: str) -> list[str]:
    """Spellings a model may use for a label; their probabilities are pooled."""
    forms = {label, label.lower(), label.capitalize(), label.upper()}
    return sorted(forms | {" " + f for f in forms})
