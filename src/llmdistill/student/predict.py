"""Batch inference with a trained student folder (any HF sequence-classification folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llmdistill.config import StudentConfig
from llmdistill.errors import UsageError
from llmdistill.student.model_card import MANIFEST_FILE


class StudentClassifier:
    """A loaded student: texts in, label probabilities out, on CPU unless told otherwise."""

    def __init__(self, model, tokenizer, max_length: int, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        id2label = model.config.id2label
        self.labels: list[str] = [str(id2label[i]) for i in range(model.config.num_labels)]
        self.parameters: int = sum(p.numel() for p in model.parameters())

    @classmethod
    def load(
        cls, model_dir: str | Path, threads: int | None = None, device: str = "cpu"
    ) -> StudentClassifier:
        """Load a model folder; `threads` sets torch's CPU thread count (process-wide)."""
        model_dir = Path(model_dir)
        if threads:
            torch.set_num_threads(threads)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForSequenceClassification.from_pretrained(
                str(model_dir), dtype=torch.float32
            )
        except (OSError, ValueError) as e:
            raise UsageError(
                f"cannot load the student model folder {model_dir} ({e}): "
                "give the folder that training wrote"
            ) from None
        return cls(model, tokenizer, _max_length(model_dir, model, tokenizer), device)

    def predict_proba(
        self, texts: list[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """(n, n_labels) probabilities in input order.

        Texts are sorted by token length and batched so that little padding is computed, then
        put back in the caller's order.
        """
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return out
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
        keys = [k for k in enc if k in self.tokenizer.model_input_names]
        starts = range(0, len(texts), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="student", unit="batch", disable=not progress):
                idx = order[start : start + batch_size]
                feats = [{k: enc[k][i] for k in keys} for i in idx]
                batch = self.tokenizer.pad(feats, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch).logits.float()
                out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def predict(self, texts: list[str], batch_size: int = 64) -> list[str]:
        """The most probable label of each text."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        return [self.labels[i] for i in probs.argmax(axis=1)]


def _max_length(model_dir: Path, model, tokenizer) -> int:
    """The training max_length if recorded, else the StudentConfig default; never past the model."""
    cap = StudentConfig().max_length
    manifest = model_dir / MANIFEST_FILE
    if manifest.exists():
        recorded = json.loads(manifest.read_text(encoding="utf-8")).get("student_config", {})
        cap = int(recorded.get("max_length", cap))
    limits = [cap, getattr(tokenizer, "model_max_length", cap)]
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models offset positions by padding_idx + 1
        offset = (model.config.pad_token_id or 0) + 1 if model.config.model_type in {
            "roberta", "xlm-roberta", "camembert"} else 0
        limits.append(positions - offset)
    return int(min(limits))
