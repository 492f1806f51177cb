"""Teacher on transformers: any causal LM folder or hub id, or a GGUF file (dequantised to fp32).

Needs no compiler. The prompt prefix's KV cache (a `DynamicCache`) is computed once and cropped
back to it after each text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers.base import PrefixScorer, model_fingerprint
from llmdistill.teachers.prompts import render_prompt
from llmdistill.teachers.registry import TeacherRequest


def from_spec(request: TeacherRequest) -> HFTeacher:
    """`hf:ID_OR_PATH` → a transformers teacher (a hub id, a model folder or a GGUF file)."""
    return HFTeacher(request.target, request.labels, request.demos, request.cfg,
                     task=request.task)


def hf_teacher_id(model_id: str) -> str:
    """The cache identity of `hf:MODEL_ID`, computed without loading the model.

    A local file or folder: `hf:NAME@FINGERPRINT` (its name plus a fingerprint of its content,
    so two folders called `model` differ and a moved copy keeps its cache). A hub id: the whole
    id, `hf:ORG/NAME`, so `a/m` and `b/m` differ.
    """
    path = Path(model_id)
    if path.exists():
        return f"hf:{path.resolve().name}@{model_fingerprint(path)}"
    return f"hf:{model_id.strip().rstrip('/')}"


class HFTeacher(PrefixScorer):
    """Label scoring with `AutoModelForCausalLM`; `trust_remote_code` is never enabled.

    `teacher_id` overrides the cache identity (default `hf_teacher_id(model_id)`); `task`
    `multi_label` asks one yes/no question per label (see `PrefixScorer`).
    """

    def __init__(self, model_id: str, labels: list[str], demos: list[dict],
                 cfg: TeacherConfig, teacher_id: str | None = None,
                 task: str = "single_label") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.cache_utils import DynamicCache

        if cfg.n_threads:
            torch.set_num_threads(cfg.n_threads)
        path = Path(model_id)
        kwargs: dict = {}
        source = model_id
        if path.suffix == ".gguf":
            if not path.is_file():
                raise TeacherError(f"GGUF file {path} not found: check the path")
            source, kwargs = str(path.parent), {"gguf_file": path.name}
        try:
            self.tok = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32,
                                                              **kwargs).eval()
        except OSError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TeacherError(f"cannot load teacher {model_id!r} ({first}): give a local "
                               "model folder or GGUF path, or go online for hub ids") from None
        if not self.tok.chat_template:
            raise TeacherError(f"teacher {model_id!r} has no chat template: use an "
                               "instruction-tuned model")
        prompt = render_prompt(cfg, labels, demos, lambda m: self.tok.apply_chat_template(
            m, tokenize=False, add_generation_prompt=True), task=task)
        self._cache_cls = DynamicCache
        self._cache = DynamicCache()
        self._n = 0
        self.id = teacher_id or hf_teacher_id(model_id)
        self.info = {"backend": "transformers", "model": model_id, "dtype": "float32",
                     "decoding": "label scoring: next-token probabilities, no sampling",
                     "parameters": sum(p.numel() for p in self.model.parameters())}
        super().__init__(labels, prompt, cfg.max_text_chars, max_text_tokens=cfg.max_text_tokens,
                         n_ctx=cfg.n_ctx)
        self.info.update(prefix_tokens=len(self._prefix), whole_sequences=self.whole_sequences)

    def _tokenize(self, text: str, special: bool, bos: bool = False) -> list[int]:
        ids = self.tok(text, add_special_tokens=False,
                       split_special_tokens=not special)["input_ids"]
        if bos and self.tok.bos_token_id is not None and getattr(self.tok, "add_bos_token", False):
            ids = [self.tok.bos_token_id, *ids]
        return list(ids)

    def _reset_to(self, n_tokens: int) -> None:
        if n_tokens == 0:
            self._cache = self._cache_cls()
        elif n_tokens < self._n:
            self._cache.crop(n_tokens - self._n)  # negative: tokens to drop
        self._n = min(self._n, n_tokens)

    @torch.inference_mode()
    def _eval(self, tokens: list[int]) -> np.ndarray:
        ids = torch.tensor([tokens])
        pos = torch.arange(self._n, self._n + len(tokens)).unsqueeze(0)
        out = self.model(input_ids=ids, cache=self._cache, position_ids=pos, use_cache=True,
                         logits_to_keep=1)  # the cache grows in place
        self._n += len(tokens)
        return torch.log_softmax(out.logits[0, -1].double(), -1).numpy()
