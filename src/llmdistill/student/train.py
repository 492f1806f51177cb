"""Fine-tune a small encoder on the teacher's probabilities with the Hugging Face Trainer.

Only rows the teacher annotated (status == "ok") are used; the others are counted and skipped,
never guessed. The best epoch is chosen by agreement with the teacher on the validation split.
Gold labels are read only from an `anchor` the caller passes explicitly (a few hundred
gold-labelled training rows, see `llmdistill.student.noise`); without one, never. The result is
a plain HF model folder that `transformers.pipeline` loads without llmdistill, written
atomically by the main process only, so the same code runs under torchrun/accelerate (DDP).

Batches are length-grouped (texts of similar length together, so dynamic padding pads little),
in an order that depends only on the seed and the epoch: a DDP run with the same global batch
sees the same batches as a single process.

The task comes from the store's manifest (`manifest["task"]`, absent: single-label). A
multi-label student is the same folder with `problem_type="multi_label_classification"` (so a
`transformers` pipeline applies a sigmoid per label), trained by
`losses.multilabel_distillation_loss`, its epoch chosen by micro-F1 with the teacher's label
sets, and per-label thresholds (`student.thresholds`) saved in its record. With `student.long_text:
windows`, long texts train and validate as windows (`student/windows.py`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
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
from llmdistill.assets import ASSETS, student_source
from llmdistill.config import FeatureLossConfig, LoraConfig, StudentConfig
from llmdistill.errors import UsageError
from llmdistill.files import atomic_dir, refuse_existing
from llmdistill.student.losses import (
    distillation_loss,
    example_weights,
    feature_loss,
    mean_pool,
    multilabel_distillation_loss,
    noisy_log_probs,
)
from llmdistill.student.model_card import render_model_card
from llmdistill.student.noise import (
    NoiseEstimate,
    class_factors,
    classification_head,
    fold_into_bias,
    prior_shift,
)
from llmdistill.student.record import StudentRecord
from llmdistill.student.targets import (
    TeacherTargets,
    TrainResult,
    decision_thresholds,
    micro_f1,
    prepare_targets,
)
from llmdistill.student.windows import Windowing, pool_logits, split_windows, windowed_targets
from llmdistill.student.zoo import TRANSFORMERS, kind_module, kind_of
from llmdistill.tasks import Task, get_task
from llmdistill.tasks.base import sigmoid

logger = logging.getLogger(__name__)

METRIC = "agreement"


class _Examples(torch.utils.data.Dataset):
    """Tokenized texts with their teacher label, probabilities and loss weight; fresh dicts.

    Multi-label: `labels` is the teacher's 0/1 label set. With windows, `text_index` says which
    text each window belongs to (validation pools by it).
    """

    def __init__(self, encodings: dict[str, list], targets: TeacherTargets,
                 weights: np.ndarray | None = None, text_index: np.ndarray | None = None
                 ) -> None:
        self.encodings = encodings
        self.targets = targets
        self.weights = weights
        self.text_index = text_index
        self.lengths = [len(ids) for ids in encodings["input_ids"]]

    def __len__(self) -> int:
        return len(self.targets.texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.targets.label_matrix is not None:
            item["labels"] = self.targets.label_matrix[i].astype(np.float32).tolist()
        else:
            item["labels"] = int(self.targets.label_ids[i])
        if self.text_index is not None:
            item["text_index"] = int(self.text_index[i])
        item["teacher_probs"] = self.targets.probs[i].tolist()
        if self.targets.features is not None:
            item["teacher_features"] = self.targets.features[i]
        if self.weights is not None:
            item["weight"] = float(self.weights[i])
        return item


class LengthGroupedBatches(torch.utils.data.Sampler[int]):
    """Indices in global batches of similar length, in an order fixed by seed and epoch.

    Each epoch: a seeded permutation, cut into mega-batches of `mega` global batches, each sorted
    by length and cut into global batches, whose order is then shuffled. Under DDP, accelerate
    deals consecutive per-device batches to the ranks, so every rank sees the same global batches
    a single process with `global_batch` would see.
    """

    def __init__(self, lengths: list[int], global_batch: int, seed: int, mega: int = 16) -> None:
        self.lengths = np.asarray(lengths)
        self.global_batch = global_batch
        self.seed = seed
        self.mega = mega
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.global_batch * self.mega
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.global_batch]
                        for i in range(0, len(chunk), self.global_batch)]
        full = [b for b in batches if len(b) == self.global_batch]
        rest = [b for b in batches if len(b) < self.global_batch]
        picks = rng.permutation(len(full))
        # a short batch only at the end: accelerate pads the last batch across ranks
        return iter(int(i) for b in [*(full[j] for j in picks), *rest] for i in b)


@dataclass
class DistillationCollator(DataCollatorWithPadding):
    """Dynamic padding per batch, plus the teacher probabilities (and weights) as tensors."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [dict(f) for f in features]
        probs = [f.pop("teacher_probs") for f in features]
        weights = [f.pop("weight") for f in features if "weight" in f]
        hidden = [f.pop("teacher_features") for f in features if "teacher_features" in f]
        batch = super().__call__(features)
        batch["teacher_probs"] = torch.tensor(probs, dtype=torch.float32)
        if hidden:
            batch["teacher_features"] = torch.from_numpy(np.stack(hidden))
        if weights:
            batch["weights"] = torch.tensor(weights, dtype=torch.float32)
        return batch


class DistillationTrainer(Trainer):
    """A Trainer whose loss is `distillation_loss` against the batch's `teacher_probs`, plus
    `feature_loss` against its `teacher_features` (through `model.feature_projection`) when
    the batch has them."""

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps

    def __init__(self, *args: Any, alpha: float, temperature: float, label_smoothing: float = 0.0,
                 transition: torch.Tensor | None = None,
                 feature: FeatureLossConfig | None = None, multi_label: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feature = feature
        self.alpha = alpha
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.transition = transition
        self.multi_label = multi_label

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        global_batch = (self.args.per_device_train_batch_size
                        * self.args.gradient_accumulation_steps * max(1, self.args.world_size))
        return LengthGroupedBatches(dataset.lengths, global_batch, self.args.seed)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        teacher = inputs.pop("teacher_probs")
        weights = inputs.pop("weights", None)
        hidden = inputs.pop("teacher_features", None)
        inputs.pop("text_index", None)
        # the hard target is argmax(teacher) (multi-label: the teacher's label set, `labels`);
        # the model itself computes no loss
        labels = inputs.pop("labels", None)
        outputs = model(**inputs, output_hidden_states=hidden is not None)
        if self.multi_label:
            loss = multilabel_distillation_loss(outputs.logits, teacher, self.alpha,
                                                hard=labels, weights=weights)
        else:
            loss = distillation_loss(outputs.logits, teacher, self.alpha, self.temperature,
                                     label_smoothing=self.label_smoothing, weights=weights,
                                     transition=self.transition)
        if hidden is not None and self.feature is not None:
            pooled = mean_pool(outputs.hidden_states[-1], inputs["attention_mask"])
            projected = self.accelerator.unwrap_model(model).feature_projection(pooled)
            loss = loss + self.feature.weight * feature_loss(projected, hidden,
                                                             self.feature.kind, weights)
        return (loss, outputs) if return_outputs else loss


def agreement(pred: EvalPrediction, transition: np.ndarray | None = None) -> dict[str, float]:
    """Share of validation texts where the student's top label is the teacher's.

    Under forward correction the student's distribution is first passed through the teacher's
    noise (`transition`): that is what it was trained to match.
    """
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    labels = pred.label_ids[0] if isinstance(pred.label_ids, tuple) else pred.label_ids
    if transition is not None:
        logits = noisy_log_probs(torch.as_tensor(logits).float(),
                                 torch.as_tensor(transition)).numpy()
    return {METRIC: float(np.mean(np.argmax(logits, axis=-1) == labels))}


def micro_f1_agreement(pred: EvalPrediction) -> dict[str, float]:
    """Multi-label agreement: micro-F1 of the student's label sets (sigmoid ≥ 0.5, i.e. logit ≥
    0) against the teacher's on validation, under the same key as `agreement` (the Trainer
    selects the epoch by it; thresholds are tuned afterwards)."""
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    labels = pred.label_ids[0] if isinstance(pred.label_ids, tuple) else pred.label_ids
    return {METRIC: micro_f1(np.asarray(logits) >= 0, np.asarray(labels))}


def text_level(pred: EvalPrediction, pool: str) -> EvalPrediction:
    """Window predictions (label_ids = (labels, text_index)) as one row per text: logits pooled
    as prediction pools them, each text's labels once."""
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    labels, owner = pred.label_ids
    texts, first, inverse = np.unique(np.asarray(owner), return_index=True, return_inverse=True)
    pooled = pool_logits(np.asarray(logits), inverse.reshape(-1), len(texts), pool)
    return EvalPrediction(predictions=pooled.astype(np.float32),
                          label_ids=np.asarray(labels)[first])


def _drop_gguf_marker(model: PreTrainedModel) -> None:
    """Forget that the weights came from GGUF: transformers dequantizes them to fp32 on load but
    keeps a GGUF quantizer on the model, and Trainer refuses to train a "quantized" model; a
    saved config would also name a quantization the folder does not have."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_student(
    name: str, labels: list[str], lora: LoraConfig | None = None, task: str = "single_label"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student with a fresh classification head for `labels`, and its tokenizer.

    An encoder, or a decoder LM (a GGUF file, e.g. the embedded smollm2-135m) whose last token
    feeds the head; a tokenizer without a padding token pads with its end-of-text token. With
    `lora`, only LoRA adapters and the head train (peft). A multi-label `task` sets the config's
    problem_type to multi_label_classification (a sigmoid per label in HF pipelines).
    """
    path, gguf_file = student_source(name)
    id2label = dict(enumerate(labels))
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" is the point, not a problem
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=id2label,
            label2id={lab: i for i, lab in id2label.items()},
            problem_type=("single_label_classification" if get_task(task).exclusive
                          else "multi_label_classification"),
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
            **extra,
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"cannot load student model {name!r} ({first}): use minilm-l6, smollm2-135m, tfidf, "
            "model2vec, a local Hugging Face model folder or GGUF file, or an HF id that is in "
            "the local cache"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(f"the tokenizer of {name!r} has neither a padding nor an "
                             "end-of-text token: pick another model")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if gguf_file:
        _drop_gguf_marker(model)
    if lora is not None:
        model = with_lora(model, lora, name)
    return model, tokenizer


def with_lora(model: PreTrainedModel, cfg: LoraConfig, name: str) -> torch.nn.Module:
    """Wrap `model` in peft LoRA adapters; the classification head trains in full."""
    try:
        from peft import LoraConfig as PeftLora
        from peft import TaskType, get_peft_model
    except ImportError:
        raise UsageError("student.lora needs peft: pip install 'llmdistill[zoo]'") from None
    peft_cfg = PeftLora(task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.alpha,
                        lora_dropout=cfg.dropout, target_modules=cfg.target_modules)
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        modules = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear)})
        first = str(e).strip().splitlines()[0][:200]
        raise UsageError(f"student.lora.target_modules do not fit {name!r} ({first}): use some "
                         f"of its Linear layers: {', '.join(modules)}") from None


def merged(model: torch.nn.Module) -> PreTrainedModel:
    """A LoRA model's adapters folded into its weights: a plain model that loads without peft."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def head_has_bias(model: torch.nn.Module, n_labels: int) -> bool:
    """Whether the classification head (the last Linear with one output per label) has a bias,
    which prior correction shifts; decoder heads (`score`) have none."""
    found = classification_head(model, n_labels)
    return found is not None and found[1].bias is not None


def train_student(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    labels: list[str],
    cfg: StudentConfig,
    out_dir: Path,
    manifest: dict | None = None,
    *,
    anchor: pd.DataFrame | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Distill the teacher's annotations into `cfg.model` and write the model folder `out_dir`.

    `train`/`validation` are annotation frames (id, text, status, label, prob_<label>...).
    `anchor`: gold-labelled *training* rows (a `gold` column; e.g. the train frame itself), of
    which `cfg.anchor_size` are sampled to estimate the teacher's noise; needed by
    prior_correction, forward_correction and class_weights="anchor", which are skipped (with a
    warning) without it. `cfg.batch_size` is per device: under DDP the global batch is
    batch_size × processes. `manifest["task"] == "multi_label"`: `prob_<label>` are independent
    per-label probabilities and `label` the canonical label set (see the module docstring);
    `validation_agreement` is then the micro-F1 with the teacher's label sets.
    Raises UsageError if `out_dir` exists (unless `overwrite`: then the new folder replaces it
    in one rename, after training), DataError if a split has no usable rows.
    """
    out_dir = Path(out_dir)
    if not overwrite:
        refuse_existing(out_dir)
    if (kind := kind_of(cfg.model)) != TRANSFORMERS:
        return kind_module(kind).train(train, validation, labels, cfg, out_dir, manifest,
                                       anchor=anchor, overwrite=overwrite)
    task = get_task((manifest or {}).get("task", "single_label"))
    tr, va, noise = prepare_targets(train, validation, labels, cfg, anchor, task.name)
    plan = noise_plan(cfg, noise, task.name)
    weights = example_weights(tr.probs, cfg.confidence_weighting,
                              class_factors(plan["class_weights"], tr.label_ids, len(labels),
                                            noise), tr.row_weights, exclusive=task.exclusive)
    transition = (torch.tensor(noise.transition, dtype=torch.float32)
                  if plan["forward_correction"] and noise is not None else None)
    logger.info("training %s on %d texts, selecting on %d", cfg.model, len(tr.texts), len(va.texts))

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    model, tokenizer = load_student(cfg.model, labels, cfg.lora, task.name)
    if tr.features is not None:
        # trained with the student, dropped before saving (it maps onto the teacher's space)
        model.feature_projection = torch.nn.Linear(model.config.hidden_size,
                                                   tr.features.shape[1])
    if plan["prior_correction"] and not head_has_bias(model, len(labels)):
        logger.warning("%s's classification head has no bias: prior correction skipped",
                       cfg.model)
        plan["prior_correction"] = False
    windowing = Windowing.of(cfg)
    tr_ex, va_ex, ex_weights, va_owner = tr, va, weights, None
    if windowing is not None:
        tr_windows, tr_owner = split_windows(tr.texts, tokenizer, windowing)
        tr_ex, ex_weights = windowed_targets(tr, tr_windows, tr_owner, weights)
        va_windows, va_owner = split_windows(va.texts, tokenizer, windowing)
        va_ex, _ = windowed_targets(va, va_windows, va_owner, None)
        logger.info("long texts as windows: %d training texts give %d windows, %d validation "
                    "texts %d", len(tr.texts), len(tr_windows), len(va.texts), len(va_windows))
    trainer = _trainer(model, tokenizer, tr_ex, va_ex, ex_weights, transition, cfg,
                       ckpt_dir=out_dir.parent / f".{out_dir.name}.checkpoints", task=task,
                       va_owner=va_owner)
    peak = measure_peak_gflops() * max(1, trainer.args.world_size)
    try:
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        trainer.accelerator.wait_for_everyone()
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(unwrapped, "feature_projection"):
            del unwrapped.feature_projection
        unwrapped = merged(unwrapped)
        record_noise = describe_noise(noise, plan, cfg, ex_weights)
        thresholds = None
        if (plan["prior_correction"] and noise is not None) or not task.exclusive:
            val_logits, val_labels = validation_logits(trainer, windowing)
            if plan["prior_correction"] and noise is not None:
                record_noise.update(_correct_prior(val_logits, unwrapped, noise))
            if not task.exclusive:
                thresholds = decision_thresholds(cfg, sigmoid(val_logits), val_labels)
        result = _result(trainer, unwrapped, out_dir, tr, seconds, peak, record_noise)
        if trainer.is_world_process_zero():
            _save(unwrapped, tokenizer, out_dir, labels, cfg, result, manifest, overwrite,
                  task=task.name, thresholds=thresholds)
        trainer.accelerator.wait_for_everyone()
    finally:
        if trainer.args.process_index == 0:
            shutil.rmtree(trainer.args.output_dir, ignore_errors=True)
    return result


def _trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tr: TeacherTargets,
             va: TeacherTargets, weights: np.ndarray | None, transition: torch.Tensor | None,
             cfg: StudentConfig, ckpt_dir: Path, task: Task | None = None,
             va_owner: np.ndarray | None = None) -> DistillationTrainer:
    """The HF Trainer: epochs evaluated on agreement with the teacher (multi-label: micro-F1),
    the best one kept. `va_owner` (windows): the text of each validation window, whose logits
    are pooled per text before the metric."""
    task = task or get_task("single_label")

    def encode(texts: list[str]) -> dict[str, list]:
        return dict(tokenizer(texts, truncation=True, max_length=cfg.max_length))

    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    # The same checkpoint name on every rank (not the pid): DDP ranks share the folder.
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 64),
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
        train_sampling_strategy="group_by_length",  # eval batches too; training: our sampler
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=False,
        remove_unused_columns=False,
        # without this, accelerate treats torchrun on a CPU-only machine as one process per rank
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=torch.cuda.is_available(),
        label_names=None if va_owner is None else ["labels", "text_index"],
    )
    with args.main_process_first(desc="clear stale checkpoints"):
        if args.process_index == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    t_np = None if transition is None else transition.numpy()
    pool = cfg.window_pool

    def metrics(pred: EvalPrediction) -> dict[str, float]:
        if va_owner is not None:
            pred = text_level(pred, pool)
        return agreement(pred, t_np) if task.exclusive else micro_f1_agreement(pred)

    return DistillationTrainer(
        model=model,
        args=args,
        train_dataset=_Examples(encode(tr.texts), tr, weights),
        eval_dataset=_Examples(encode(va.texts), va, text_index=va_owner),
        data_collator=DistillationCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)],
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        label_smoothing=cfg.label_smoothing,
        transition=transition,
        feature=cfg.feature_loss if tr.features is not None else None,
        multi_label=not task.exclusive,
    )


def validation_logits(trainer: Trainer,
                      windowing: Windowing | None) -> tuple[np.ndarray, np.ndarray]:
    """The kept model's validation logits, one row per text (windows pooled), and the
    teacher's labels of the same rows (the eval order is length-grouped, not the split's)."""
    out = trainer.predict(trainer.eval_dataset)
    pred = EvalPrediction(predictions=out.predictions, label_ids=out.label_ids)
    if windowing is not None:
        pred = text_level(pred, windowing.pool)
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    labels = pred.label_ids[0] if isinstance(pred.label_ids, tuple) else pred.label_ids
    return np.asarray(logits), np.asarray(labels)


def _correct_prior(logits: np.ndarray, model: PreTrainedModel,
                   noise: NoiseEstimate) -> dict[str, Any]:
    """Shift the logits by log gold prior − log the student's validation prior, in the bias."""
    model_prior = torch.softmax(torch.as_tensor(logits).float(), -1).mean(0).numpy()
    shift = prior_shift(noise.gold_prior, model_prior)
    return {"prior_shift": np.round(shift, 4).tolist(),
            "student_prior_on_validation": np.round(model_prior, 4).tolist(),
            "shift_folded_into": f"{fold_into_bias(model, shift)}.bias"}


def _result(trainer: Trainer, model: PreTrainedModel, out_dir: Path, tr: TeacherTargets,
            seconds: float, peak: float, noise: dict[str, Any]) -> TrainResult:
    """What the run produced, with its speed against this CPU's FLOP bound."""
    tokens = float(np.mean(trainer.train_dataset.lengths))
    bound = peak * 1e9 / (6 * non_embedding_parameters(model) * tokens)
    best = trainer.state.best_metric
    result = TrainResult(
        model_dir=out_dir,
        used=len(tr.texts),
        skipped=tr.skipped,
        best_epoch=_best_epoch(trainer),
        validation_agreement=math.nan if best is None else float(best),
        samples_per_second=len(tr.texts) * float(trainer.state.epoch or 0.0) / seconds,
        train_seconds=seconds,
        parameters=sum(p.numel() for p in model.parameters()),
        flop_bound_samples_per_second=bound,
        peak_gflops=peak,
        tokens_per_text=tokens,
        noise=noise,
    )
    logger.info(
        "best epoch %g: validation agreement with the teacher %.3f; %.1f samples/s "
        "(FLOP bound %.0f at %.0f GFLOP/s)", result.best_epoch, result.validation_agreement,
        result.samples_per_second, bound, peak,
    )
    return result


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
          labels: list[str], cfg: StudentConfig, result: TrainResult,
          manifest: dict | None, overwrite: bool, task: str = "single_label",
          thresholds: list[float] | None = None) -> None:
    """The model folder with its model card and record (main process only)."""
    embedded = ASSETS.get(cfg.model)
    base = embedded.description if embedded and embedded.kind == "student" else cfg.model
    manifest = {"base_model": base, **(manifest or {})}
    record = StudentRecord.model_validate({
        **manifest, "llmdistill_version": __version__, "labels": labels,
        "student_config": cfg.model_dump(mode="json"), **result.to_dict(), "task": task,
        "thresholds": thresholds})
    record.check_decision()
    about = {k: v for k, v in manifest.items() if k not in ("task", "thresholds")}
    card = render_model_card(labels, record.student_config, result.to_dict(), about,
                             task=task, thresholds=thresholds)
    write_model_folder(model, tokenizer, out_dir, card, record, overwrite)


ANCHOR_OPTIONS = ("prior_correction", "forward_correction")
# what each option assumes that a multi-label student (a sigmoid per label) does not have
SOFTMAX_ONLY = {
    "prior_correction": "shifts a softmax's class prior",
    "forward_correction": "passes a softmax through the teacher's confusion",
    "class_weights": "weights each text by its one label",
    "label_smoothing": "mixes one distribution over the labels with uniform",
}


def noise_plan(cfg: StudentConfig, noise: NoiseEstimate | None,
               task: str = "single_label") -> dict[str, Any]:
    """Which anchor-based options can run; the others are switched off with a warning.

    Multi-label: the options of `SOFTMAX_ONLY` are switched off, one logged line each that is
    on (a warning where it differs from the default, else info); `label_smoothing` is then in
    the plan too.
    """
    plan = {k: bool(getattr(cfg, k)) for k in ANCHOR_OPTIONS}
    plan["class_weights"] = cfg.class_weights
    if not get_task(task).exclusive:
        defaults = StudentConfig()
        for name, why in SOFTMAX_ONLY.items():
            value = getattr(cfg, name)
            if value in (False, "none", 0.0):
                continue
            log = logger.info if value == getattr(defaults, name) else logger.warning
            log("multi_label: %s=%s %s, which assumes one label per text: skipped", name,
                value, why)
        plan.update(prior_correction=False, forward_correction=False, class_weights="none",
                    label_smoothing=0.0)
    wanted = [k for k in ANCHOR_OPTIONS if plan[k]]
    if plan["class_weights"] == "anchor":
        wanted.append("class_weights=anchor")
    if noise is None and wanted:
        logger.warning("no anchor set (gold-labelled training rows) was given: %s skipped",
                       ", ".join(wanted))
        plan.update({k: False for k in ANCHOR_OPTIONS})
        if cfg.class_weights == "anchor":
            plan["class_weights"] = "none"
    return plan


def describe_noise(noise: NoiseEstimate | None, plan: dict, cfg: StudentConfig,
                    weights: np.ndarray | None) -> dict[str, Any]:
    """The record of what noise handling was used, for the model card and the report."""
    out: dict[str, Any] = {
        "anchor_size": noise.anchor_size if noise else 0,
        "anchor_targets": cfg.anchor_targets if noise else "teacher",
        **plan,
        "label_smoothing": plan.get("label_smoothing", cfg.label_smoothing),
        "confidence_weighting": cfg.confidence_weighting,
        "weights_vary": weights is not None,
    }
    if noise is not None:
        out["teacher_agreement_on_anchor"] = round(noise.teacher_agreement, 4)
        if noise.task != "single_label":
            out["teacher_agreement_metric"] = "micro_f1"
        out["anchor_gold_prior"] = noise.to_dict()["gold_prior"]
        out["teacher_confusion_counts"] = noise.to_dict()["counts"]
    return out


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables: the ones each token's FLOPs scale with."""
    emb = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)
              for p in m.parameters(recurse=False))
    return sum(p.numel() for p in model.parameters()) - emb


def measure_peak_gflops(size: int = 1024, repeats: int = 5) -> float:
    """fp32 matmul GFLOP/s on this process's torch threads (best of `repeats`)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def write_model_folder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    card: str,
    record: StudentRecord,
    overwrite: bool = False,
) -> None:
    """Write weights (safetensors), tokenizer, README.md and llmdistill.json, all or nothing."""
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        record.save(tmp)


def _best_epoch(trainer: Trainer) -> float:
    """The epoch of the checkpoint that was kept (the last one if none was ever better)."""
    evals = [e for e in trainer.state.log_history if f"eval_{METRIC}" in e]
    best = [e for e in evals if e.get("step") == trainer.state.best_global_step]
    chosen = best or evals
    return float(chosen[-1]["epoch"]) if chosen else float(trainer.state.epoch or 0.0)
