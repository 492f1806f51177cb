"""Teacher on llama.cpp (llama-cpp-python): GGUF models on CPU, the prompt prefix evaluated once."""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError
from llmdistill.teachers.base import PrefixScorer, file_fingerprint, log_softmax
from llmdistill.teachers.prompts import render_prompt
from llmdistill.teachers.registry import TeacherRequest

__all__ = ["LlamaCppTeacher", "file_fingerprint", "from_spec"]


def from_spec(request: TeacherRequest) -> LlamaCppTeacher:
    """`llamacpp:PATH.gguf` → a teacher named by the file's stem (its id adds a fingerprint)."""
    path = Path(request.target).expanduser()
    return LlamaCppTeacher(path, path.stem, request.labels, request.demos, request.cfg,
                           task=request.task)


def open_llama(model_path: Path, cfg: TeacherConfig, **kwargs) -> tuple[ModuleType, Any]:
    """(llama_cpp, a quiet `Llama` on `model_path` with the teacher's context and threads);
    `kwargs` go to `Llama` (logits or embedding mode). One-line TeacherErrors name the fix."""
    try:
        import llama_cpp
    except ImportError:
        raise TeacherError("llama-cpp-python is not installed: pip install "
                           "'llmdistill[llamacpp]' (or use an hf: teacher)") from None
    if not model_path.is_file():
        raise TeacherError(f"GGUF file {model_path} not found: check the path")
    threads = cfg.n_threads or os.cpu_count() or 1
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=cfg.n_ctx, n_threads=threads,
                                  n_threads_batch=threads, n_batch=512, verbose=False, seed=0,
                                  **kwargs)
    except Exception as e:
        raise TeacherError(f"llama.cpp cannot load {model_path} ({e}): is it a GGUF "
                           "model file?") from None
    return llama_cpp, llm


class LlamaCppTeacher(PrefixScorer):
    """Label scoring with a GGUF model; the KV cache of the shared prefix is kept and reused.

    Its id is `llamacpp:NAME@FINGERPRINT`: the fingerprint (size, first and last MiB) tells
    apart two files of the same name, and the same file at another path keeps its cache.
    """

    def __init__(self, model_path: Path, name: str, labels: list[str], demos: list[dict],
                 cfg: TeacherConfig, task: str = "single_label") -> None:
        self._lib, self.llm = open_llama(model_path, cfg, logits_all=False)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # installed: checked above

        threads = self.llm.n_threads
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise TeacherError(f"{model_path} has no chat template in its metadata: "
                               "use an instruction-tuned GGUF")
        eos = self.llm.detokenize([self.llm.token_eos()]).decode("utf-8", "ignore")
        bos = self.llm.detokenize([self.llm.token_bos()]).decode("utf-8", "ignore")
        fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        prompt = render_prompt(cfg, labels, demos, lambda m: fmt(messages=m).prompt, task=task)
        self._n_vocab = self.llm.n_vocab()
        fingerprint = file_fingerprint(model_path)
        self.id = f"llamacpp:{name}@{fingerprint}"
        self.info = {"backend": "llama.cpp", "model": name, "path": str(model_path),
                     "fingerprint": fingerprint, "n_ctx": cfg.n_ctx, "threads": threads,
                     "parameters": int(self._lib.llama_model_n_params(self.llm.model)),
                     "decoding": "label scoring: next-token probabilities, no sampling",
                     "llama_cpp_python": self._lib.__version__}
        try:
            super().__init__(labels, prompt, cfg.max_text_chars,
                             max_text_tokens=cfg.max_text_tokens, n_ctx=cfg.n_ctx)
        except TeacherError:
            self.llm.close()
            raise
        self.info.update(prefix_tokens=len(self._prefix), whole_sequences=self.whole_sequences)

    def _tokenize(self, text: str, special: bool, bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    def _reset_to(self, n_tokens: int) -> None:
        self.llm.n_tokens = n_tokens  # eval() drops the KV cache beyond n_tokens

    def _eval(self, tokens: list[int]) -> np.ndarray:
        if self.llm.n_tokens + len(tokens) > self.llm.n_ctx():
            raise ValueError(f"prompt of {self.llm.n_tokens + len(tokens)} tokens exceeds "
                             f"n_ctx={self.llm.n_ctx()}")
        self.llm.eval(tokens)
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                       shape=(self._n_vocab,))
        return log_softmax(logits)

    def close(self) -> None:
        self.llm.close()
