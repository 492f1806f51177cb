"""The teacher's prompt: instructions, label descriptions and demos, rendered so that the next
token the model writes is the answer.

The prompt is cut around the text into a prefix (everything before it: system message and demos,
identical for every text, so its KV cache is computed once) and a short suffix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from llmdistill.config import TeacherConfig

_MARK = "@@LLMDISTILL_TEXT@@"


@dataclass(frozen=True)
class Prompt:
    prefix: str
    suffix: str
    demos: list[dict]  # {"id", "text", "label"} from the training split

    @property
    def hash(self) -> str:
        blob = json.dumps([self.prefix, self.suffix], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def system_message(cfg: TeacherConfig, labels: list[str]) -> str:
    lines = [cfg.task, "", "Labels:"]
    lines += [f"- {lab}: {cfg.label_descriptions.get(lab, lab)}" for lab in labels]
    lines += ["", f"Answer with exactly one word: {', '.join(labels)}."]
    return "\n".join(lines)


def user_message(text: str) -> str:
    return f"Text: {text}"


def pick_demos(train: pd.DataFrame, labels: list[str], n: int, seed: int) -> list[dict]:
    """n demos from the training split, as balanced over labels as n allows, in a seeded order."""
    if n <= 0 or "label" not in train.columns:
        return []
    per = [train[train["label"] == lab] for lab in labels]
    picks: list[pd.Series] = []
    for i in range(n):
        pool = per[i % len(labels)]
        k = i // len(labels)
        if k < len(pool):
            picks.append(pool.sample(n=k + 1, random_state=seed).iloc[k])
    order = pd.DataFrame(picks).sample(frac=1.0, random_state=seed)
    return [{"id": r.id, "text": r.text, "label": r.label} for r in order.itertuples()]


def build_messages(cfg: TeacherConfig, labels: list[str], demos: list[dict],
                   text: str) -> list[dict]:
    msgs = [{"role": "system", "content": system_message(cfg, labels)}]
    for d in demos:
        msgs += [{"role": "user", "content": user_message(d["text"])},
                 {"role": "assistant", "content": d["label"]}]
    return msgs + [{"role": "user", "content": user_message(text)}]


def render_prompt(cfg: TeacherConfig, labels: list[str], demos: list[dict],
                  apply_template: Callable[[list[dict]], str]) -> Prompt:
    """Render the chat with a marker in place of the text and cut it there."""
    rendered = apply_template(build_messages(cfg, labels, demos, _MARK))
    if rendered.count(_MARK) != 1:
        raise ValueError("the chat template must render the user text exactly once")
    prefix, suffix = rendered.split(_MARK)
    return Prompt(prefix=prefix, suffix=suffix, demos=demos)


def label_variants(label: str) -> list[str]:
    """Spellings a model may use for a label; their probabilities are pooled."""
    forms = {label, label.lower(), label.capitalize(), label.upper()}
    return sorted(forms | {" " + f for f in forms})
