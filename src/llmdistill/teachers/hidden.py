"""A teacher's hidden state per text, for feature distillation (`student.feature_loss`).

What the LLM represents about a text carries more than its label probabilities; the student's
pooled representation is trained to predict it through a learned projection. A local GGUF
teacher gives the mean of its last layer's states over the text's tokens (llama.cpp in
embedding mode, a second context beside the label scorer); an `openai:` teacher gives its
server's `/v1/embeddings` answer where the server has one. Vectors are cached per
(embedder id, text hash) in the annotation cache, so a rerun computes only what is missing.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from llmdistill import assets
from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError, UsageError
from llmdistill.teachers.base import file_fingerprint
from llmdistill.teachers.registry import BACKENDS

POOLING_MEAN = 1  # llama_cpp.LLAMA_POOLING_TYPE_MEAN (llama.h), without importing llama_cpp


class Embedder(ABC):
    """Texts → one vector each. `id` names the model and the pooling (the cache key)."""

    id: str
    batch_size: int = 16

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32 vectors."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model."""


class LlamaCppEmbedder(Embedder):
    """Mean-pooled last-layer states of a GGUF model (llama.cpp embedding mode)."""

    def __init__(self, model_path: Path, cfg: TeacherConfig) -> None:
        from llmdistill.teachers.llamacpp import open_llama

        _, self.llm = open_llama(model_path, cfg, embedding=True, pooling_type=POOLING_MEAN)
        self.max_chars = cfg.max_text_chars
        self.id = f"llamacpp-mean:{model_path.stem}@{file_fingerprint(model_path)}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = [self.llm.embed(t[: self.max_chars] or " ") for t in texts]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.llm.close()


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible server's `/v1/embeddings` (the key from the environment only)."""

    def __init__(self, target: str, cfg: TeacherConfig, http_client=None) -> None:
        import openai

        from llmdistill.teachers.openai_api import is_loopback, parse_openai_spec

        self.model, self.base_url = parse_openai_spec(target)
        key = os.environ.get(cfg.api.api_key_env)
        if not key and not is_loopback(self.base_url):
            raise TeacherError(f"no API key: set the environment variable {cfg.api.api_key_env}")
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "no-key",
                                     max_retries=cfg.api.max_retries, timeout=cfg.api.timeout,
                                     http_client=http_client)
        self._openai = openai
        self.max_chars = cfg.max_text_chars
        self.id = f"openai-embeddings:{self.model}@{self.base_url}"

    def embed(self, texts: list[str]) -> np.ndarray:
        try:
            reply = self._client.embeddings.create(
                model=self.model, input=[t[: self.max_chars] or " " for t in texts])
        except self._openai.NotFoundError:
            raise TeacherError(f"{self.base_url} has no /embeddings endpoint for {self.model}: "
                               "use a server that serves embeddings, or set "
                               "student.feature_loss.teacher to a local GGUF") from None
        except self._openai.APIError as e:
            raise TeacherError(f"the embeddings request to {self.base_url} failed "
                               f"({type(e).__name__}): check the server") from None
        rows = sorted(reply.data, key=lambda d: d.index)
        return np.asarray([r.embedding for r in rows], dtype=np.float32)

    def close(self) -> None:
        self._client.close()


def load_embedder(spec: str, cfg: TeacherConfig, cache_dir: Path) -> Embedder:
    """The embedder for a teacher spec: an embedded GGUF, `llamacpp:PATH` or `openai:...`."""
    backend, _, target = spec.partition(":")
    if spec in assets.ASSETS and assets.ASSETS[spec].kind == "teacher":
        return LlamaCppEmbedder(assets.teacher_gguf(spec, cache_dir), cfg)
    if backend == "llamacpp" and target:
        return LlamaCppEmbedder(Path(target).expanduser(), cfg)
    if backend == "openai" and target:
        return OpenAIEmbedder(target, cfg)
    known = ", ".join(b for b in BACKENDS if b not in ("llamacpp", "openai"))
    raise UsageError(f"teacher {spec!r} gives no hidden states ({known} teachers have none): "
                     "set student.feature_loss.teacher to an embedded GGUF (qwen2.5-1.5b), "
                     "llamacpp:PATH.gguf or openai:MODEL@URL")
