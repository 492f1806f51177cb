"""Sentence embeddings from a student's encoder: mean-pooled last hidden states, L2-normalised.

Used where a cheap view of the texts through the student's eyes is enough: diversity among the
texts active distillation sends to the teacher, and the out-of-fold probabilities confident
learning needs (a linear head on these features, cross-validated, instead of k fine-tunings).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from llmdistill.assets import student_path
from llmdistill.data import clean_text
from llmdistill.errors import UsageError


def embed(model: str, texts: list[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """(n, hidden) float32 embeddings of `texts` from `model` (embedded name, folder or HF id;
    a trained student folder works too: its encoder is used, its head ignored)."""
    path = student_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load the encoder of {model!r} ({e}): use minilm-l6, a local "
                         "model folder, or an HF id in the local cache") from None
    encoder.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer([clean_text(t) for t in texts[i:i + batch_size]], padding=True,
                              truncation=True, max_length=max_length, return_tensors="pt")
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    dim = encoder.config.hidden_size
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
