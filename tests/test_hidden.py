"""Teacher hidden states for feature distillation: embedders, the vector cache, the store column."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from llmdistill.annotate import AnnotationCache, hidden_states
from llmdistill.config import TeacherConfig
from llmdistill.errors import TeacherError, UsageError
from llmdistill.teachers.hidden import Embedder, OpenAIEmbedder, load_embedder


class CountingEmbedder(Embedder):
    id = "fake-embedder"
    batch_size = 3

    def __init__(self) -> None:
        self.seen: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.seen += texts
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_hidden_states_are_cached_so_a_rerun_embeds_only_new_texts(tmp_path) -> None:
    frame = pd.DataFrame({"id": list("abcd"), "text": ["a", "bb", "a", "cab"]})
    cache = AnnotationCache(tmp_path / "c.sqlite")
    emb = CountingEmbedder()
    out = hidden_states(frame, emb, cache)
    assert sorted(emb.seen) == ["a", "bb", "cab"]  # duplicates embedded once
    assert np.allclose(out["teacher_features"].iloc[3], [3, 1, 1])
    again = CountingEmbedder()
    more = pd.concat([frame, pd.DataFrame({"id": ["e"], "text": ["new one"]})])
    out2 = hidden_states(more, again, cache)
    assert again.seen == ["new one"]
    assert all(np.allclose(a, b) for a, b in zip(out["teacher_features"],
                                                 out2["teacher_features"].iloc[:4], strict=True))


def test_openai_embedder_reads_the_embeddings_endpoint_in_input_order() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0]}
                for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"object": "list", "data": data[::-1], "model": "m",
                                         "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    client = httpx.Client(transport=httpx.MockTransport(reply))
    emb = OpenAIEmbedder("m@http://127.0.0.1:9/v1", TeacherConfig(), http_client=client)
    vecs = emb.embed(["abc", "a"])
    assert vecs.dtype == np.float32 and vecs[:, 0].tolist() == [3.0, 1.0]


def test_a_server_without_embeddings_is_a_teacher_error_naming_the_fix() -> None:
    client = httpx.Client(transport=httpx.MockTransport(
        lambda r: httpx.Response(404, json={"error": {"message": "not found"}})))
    emb = OpenAIEmbedder("m@http://127.0.0.1:9/v1", TeacherConfig(api={"max_retries": 0}),
                         http_client=client)
    with pytest.raises(TeacherError, match="no /embeddings endpoint"):
        emb.embed(["x"])


def test_teachers_without_hidden_states_are_refused_with_the_fix(tmp_path) -> None:
    for spec in ("replay:labels.csv#label", "hf:some/model"):
        with pytest.raises(UsageError, match="feature_loss.teacher"):
            load_embedder(spec, TeacherConfig(), tmp_path)
