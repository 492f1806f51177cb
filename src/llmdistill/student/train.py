"""Fine-tune a small encoder on the teacher's probabilities with the Hugging Face Trainer.

Only rows the teacher annotated (status == "ok") are used; the others are counted and skipped,
never guessed. The best epoch is chosen by agreement with the teacher on the validation split:
gold labels, if present, are never looked at. The result is a plain HF model folder that
`transformers.pipeline` loads without llmdistill, written atomically by the main process only,
so the same code runs under torchrun/accelerate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from llmdistill import __version__
from llmdistill.assets import ASSETS, student_path
from llmdistill.config import StudentConfig
from llmdistill.errors import DataError, UsageError
from llmdistill.student.losses import distillation_loss
from llmdistill.student.model_card import MANIFEST_FILE, render_model_card

logger = logging.getLogger(__name__)

PROB_PREFIX = "prob_"
METRIC = "agreement"


@dataclass
class TrainResult:
    """What a training run produced and how it went."""

    model_dir: Path
    used: int
    skipped: int
    best_epoch: float
    validation_agreement: float
    samples_per_second: float
    train_seconds: float
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the path as a string)."""
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        return d


@dataclass
class TeacherTargets:
    """The usable (status == "ok") rows of one split: texts, teacher probabilities, labels."""

    texts: list[str]
    probs: np.ndarray  # (n, n_labels), rows sum to 1
    label_ids: np.ndarray  # (n,), the teacher's label as an index into the label set
    skipped: int


def prob_columns(labels: list[str]) -> list[str]:
    """The annotation frame's teacher-probability columns, in label order."""
    return [f"{PROB_PREFIX}{lab}" for lab in labels]


def teacher_targets(frame: pd.DataFrame, labels: list[str], split: str) -> TeacherTargets:
    """Pick the ok rows of an annotation frame and check their teacher probabilities."""
    cols = prob_columns(labels)
    missing = [c for c in ["text", "status", "label", *cols] if c not in frame.columns]
    if missing:
        raise DataError(
            f"{split} annotations lack column(s) {', '.join(missing)}: annotate with the label "
            f"set {labels} first"
        )
    ok = frame[frame["status"].astype(str) == "ok"]
    probs = ok[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    sums = probs.sum(axis=1)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1) | ~(sums > 0)
    if bad.any():
        first = ok["id"].iloc[int(np.argmax(bad))] if "id" in ok.columns else ok.index[bad][0]
        raise DataError(
            f"{int(bad.sum())} ok rows of {split} have missing or negative teacher probabilities "
            f"(first: id {first}): re-annotate them or mark their status as failed"
        )
    unknown = sorted(set(ok["label"].astype(str)) - set(labels))
    if unknown:
        raise DataError(f"{split} has teacher labels {unknown} outside the label set {labels}")
    index = {lab: i for i, lab in enumerate(labels)}
    return TeacherTargets(
        texts=ok["text"].fillna("").astype(str).tolist(),
        probs=probs / sums[:, None] if len(ok) else probs.reshape(0, len(labels)),
        label_ids=ok["label"].astype(str).map(index).to_numpy(dtype=np.int64),
        skipped=len(frame) - len(ok),
    )


class _Examples(torch.utils.data.Dataset):
    """Tokenized texts with their teacher label and probabilities; items are fresh dicts."""

    def __init__(self, encodings: dict[str, list], targets: TeacherTargets) -> None:
        self.encodings = encodings
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = int(self.targets.label_ids[i])
        item["teacher_probs"] = self.targets.probs[i].tolist()
        return item


@dataclass
class DistillationCollator(DataCollatorWithPadding):
    """Dynamic padding per batch, plus the teacher probabilities as a float tensor."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        probs = [f.pop("teacher_probs") for f in features]
        batch = super().__call__(features)
        batch["teacher_probs"] = torch.tensor(probs, dtype=torch.float32)
        return batch


class DistillationTrainer(Trainer):
    """A Trainer whose loss is `distillation_loss` against the batch's `teacher_probs`."""

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps

    def __init__(self, *args: Any, alpha: float, temperature: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        teacher = inputs.pop("teacher_probs")
        inputs.pop("labels", None)  # the hard target is argmax(teacher); the model needs no loss
        outputs = model(**inputs)
        loss = distillation_loss(outputs.logits, teacher, self.alpha, self.temperature)
        return (loss, outputs) if return_outputs else loss


def agreement(pred: EvalPrediction) -> dict[str, float]:
    """Share of validation texts where the student's top label is the teacher's."""
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    labels = pred.label_ids[0] if isinstance(pred.label_ids, tuple) else pred.label_ids
    return {METRIC: float(np.mean(np.argmax(logits, axis=-1) == labels))}


def load_student(
    name: str, labels: list[str]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student encoder with a fresh classification head for `labels`, and its tokenizer."""
    path = student_path(name)
    id2label = dict(enumerate(labels))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is the point, not a problem
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=id2label,
            label2id={lab: i for i, lab in id2label.items()},
            problem_type="single_label_classification",
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
        )
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot load student model {name!r} ({e}): use minilm-l6, a local Hugging Face "
            "model folder, or an HF id that is in the local cache"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        raise UsageError(f"the tokenizer of {name!r} has no padding token: pick an encoder model")
    return model, tokenizer


def train_student(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: StudentConfig,
    out_dir: Path,
    manifest: dict | None = None,
) -> TrainResult:
    """Distill the teacher's annotations into `cfg.model` and write the model folder `out_dir`.

    `train`/`validation` are annotation frames (id, text, status, label, prob_<label>...).
    Raises UsageError if `out_dir` exists, DataError if a split has no usable rows.
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(f"the label set {labels} needs at least two distinct labels")
    tr = teacher_targets(train, labels, "train")
    va = teacher_targets(validation, labels, "validation")
    if tr.skipped:
        logger.warning("train: skipped %d rows the teacher did not annotate (status != ok)",
                       tr.skipped)
    if va.skipped:
        logger.warning("validation: skipped %d rows the teacher did not annotate", va.skipped)
    if not tr.texts or not va.texts:
        split = "train" if not tr.texts else "validation"
        raise DataError(f"the {split} split has no rows annotated ok: nothing to learn from")
    logger.info("training %s on %d texts, selecting on %d", cfg.model, len(tr.texts), len(va.texts))

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    model, tokenizer = load_student(cfg.model, labels)

    def encode(texts: list[str]) -> dict[str, list]:
        return dict(tokenizer(texts, truncation=True, max_length=cfg.max_length))

    train_ds = _Examples(encode(tr.texts), tr)
    val_ds = _Examples(encode(va.texts), va)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The same name on every rank (not the pid): DDP ranks share the checkpoint folder.
    ckpt_dir = out_dir.parent / f".{out_dir.name}.checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # a value below 1 is a fraction of all steps
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model=METRIC,
        greater_is_better=True,
        save_total_limit=1,
        save_only_model=True,
        train_sampling_strategy="group_by_length",
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=False,
        remove_unused_columns=False,
        # without this, accelerate treats torchrun on a CPU-only machine as one process per rank
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    with args.main_process_first(desc="clear stale checkpoints"):
        if args.process_index == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    trainer = DistillationTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=DistillationCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=agreement,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)],
        alpha=cfg.alpha,
        temperature=cfg.temperature,
    )
    try:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        trainer.accelerator.wait_for_everyone()
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        epochs_run = float(trainer.state.epoch or 0.0)
        best = trainer.state.best_metric
        result = TrainResult(
            model_dir=out_dir,
            used=len(tr.texts),
            skipped=tr.skipped,
            best_epoch=_best_epoch(trainer),
            validation_agreement=math.nan if best is None else float(best),
            samples_per_second=len(tr.texts) * epochs_run / seconds,
            train_seconds=seconds,
            parameters=sum(p.numel() for p in unwrapped.parameters()),
        )
        logger.info(
            "best epoch %g: validation agreement with the teacher %.3f; %.1f samples/s",
            result.best_epoch, result.validation_agreement, result.samples_per_second,
        )
        if trainer.is_world_process_zero():
            embedded = ASSETS.get(cfg.model)
            base = embedded.description if embedded and embedded.kind == "student" else cfg.model
            manifest = {"base_model": base, **(manifest or {})}
            record = {
                **manifest,
                "llmdistill_version": __version__,
                "labels": labels,
                "student_config": cfg.model_dump(mode="json"),
                **result.to_dict(),
            }
            card = render_model_card(
                labels, cfg.model_dump(mode="json"), result.to_dict(), manifest
            )
            write_model_folder(unwrapped, tokenizer, out_dir, card, record)
        trainer.accelerator.wait_for_everyone()
    finally:
        if args.process_index == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


def write_model_folder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    card: str,
    record: dict[str, Any],
) -> None:
    """Write weights (safetensors), tokenizer, README.md and llmdistill.json, all or nothing."""
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(record, indent=2, default=_jsonable) + "\n", encoding="utf-8"
        )
        # some writers create private (0600) files; give them all the umask's default mode
        mode = stat.S_IMODE((tmp / "README.md").stat().st_mode)
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(mode)
        _refuse_existing(out_dir)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            _refuse_existing(out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_existing(out_dir: Path) -> None:
    if out_dir.exists():
        raise UsageError(f"{out_dir} exists: pass a new --out or delete it")


def _best_epoch(trainer: Trainer) -> float:
    """The epoch of the checkpoint that was kept (the last one if none was ever better)."""
    evals = [e for e in trainer.state.log_history if f"eval_{METRIC}" in e]
    best = [e for e in evals if e.get("step") == trainer.state.best_global_step]
    chosen = best or evals
    return float(chosen[-1]["epoch"]) if chosen else float(trainer.state.epoch or 0.0)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
