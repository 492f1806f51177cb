"""The knowledge-distillation loss: learn the teacher's probabilities, not only its labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Teacher probabilities are clamped to this before the log, so a hard 0 does not become -inf.
PROB_FLOOR = 1e-8


def soften(teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher log-probabilities at temperature T: log_softmax(log(p) / T).

    T > 1 spreads the mass (the student sees which wrong labels the teacher found plausible);
    T < 1 sharpens it. Works in log space so tiny probabilities stay finite.
    """
    logp = teacher_probs.float().clamp_min(PROB_FLOOR).log()
    return F.log_softmax(logp / temperature, dim=-1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    alpha: float,
    temperature: float,
    *,
    label_smoothing: float = 0.0,
    weights: torch.Tensor | None = None,
    transition: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, argmax teacher).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's for any T
    (Hinton et al., 2015). Both terms are means over the batch, or weighted means with per-example
    `weights` (normalise them over the whole training set, not per batch: then the loss of a
    batch split across DDP ranks averages to the loss of the whole batch).

    `label_smoothing` mixes the targets with the uniform distribution (both terms).
    `transition` (k × k, rows P(teacher j | true i)) is forward correction: the student's
    distribution is passed through the teacher's noise before it meets the teacher's targets.
    """
    logits = student_logits.float()
    k = logits.shape[-1]
    student_log = noisy_log_probs(logits, transition)
    targets = teacher_probs.float()
    hard = targets.argmax(dim=-1)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / k
    teacher_log_t = soften(targets, temperature)
    student_log_t = F.log_softmax(student_log / temperature, dim=-1)
    kl = (teacher_log_t.exp() * (teacher_log_t - student_log_t)).sum(dim=-1)
    nll = -student_log.gather(1, hard[:, None]).squeeze(1)
    ce = (1.0 - label_smoothing) * nll - label_smoothing * student_log.mean(dim=-1)
    per_example = alpha * temperature**2 * kl + (1.0 - alpha) * ce
    if weights is not None:
        per_example = per_example * weights.float()
    return per_example.mean()


def multilabel_distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    alpha: float,
    *,
    hard: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha * BCE(sigmoid(z), p_teacher) + (1 - alpha) * BCE(sigmoid(z), hard 0/1 labels).

    Multi-label: each label is its own Bernoulli, so the soft term is binary cross-entropy to
    the teacher's probability of that label, minimised exactly at sigmoid(z) = p. No temperature:
    softening a softmax shows the student how the teacher ranks the wrong labels, but a
    Bernoulli has one degree of freedom and nothing to reveal, and sigmoid(z / T) against
    sigmoid(logit(p) / T) only rescales the same target (`student.temperature` is unused here).
    `hard` (n, k) are the teacher's labels (its probabilities at 0.5, or an anchor row's gold
    set); None takes p ≥ 0.5. Each text's loss is the mean over its labels, so the scale does not
    grow with the label count; `weights` weight texts as in `distillation_loss`.
    """
    logits = student_logits.float()
    targets = teacher_probs.float().clamp(0.0, 1.0)
    hard = (targets >= 0.5).float() if hard is None else hard.float()
    soft = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=-1)
    exact = F.binary_cross_entropy_with_logits(logits, hard, reduction="none").mean(dim=-1)
    per_example = alpha * soft + (1.0 - alpha) * exact
    if weights is not None:
        per_example = per_example * weights.float()
    return per_example.mean()


def noisy_log_probs(logits: torch.Tensor, transition: torch.Tensor | None) -> torch.Tensor:
    """log softmax(logits), or log(softmax(logits) @ transition) under forward correction."""
    if transition is None:
        return F.log_softmax(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1) @ transition.to(logits)
    return probs.clamp_min(PROB_FLOOR).log()


def example_weights(
    teacher_probs: np.ndarray, confidence: bool, class_factors: np.ndarray | None,
    row_weights: np.ndarray | None = None, exclusive: bool = True,
) -> np.ndarray | None:
    """Per-example loss weights, mean 1 over the training set, or None when all would be 1.

    `confidence`: weight by the teacher's top probability (a no-op for one-hot labels); for
    multi-label (`exclusive=False`) by its mean confidence per label, mean of max(p, 1 − p);
    `class_factors`: one factor per class, applied by the teacher's label;
    `row_weights`: one factor per row (the store's `weight` column).
    """
    w = np.ones(len(teacher_probs)) if row_weights is None else np.array(row_weights, float)
    if confidence and not exclusive:
        w *= np.maximum(teacher_probs, 1.0 - teacher_probs).mean(axis=1)
    elif confidence:
        w *= teacher_probs.max(axis=1)
    if class_factors is not None:
        w *= np.asarray(class_factors)[teacher_probs.argmax(axis=1)]
    if len(w) == 0 or np.allclose(w, w[0]):
        return None
    return w / w.mean()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq, d) states → (batch, d), the mean over the tokens the mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def feature_loss(projected: torch.Tensor, target: torch.Tensor, kind: str = "cosine",
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Distance between the student's projected representation and the teacher's hidden state:
    1 − cosine, or the squared error against the unit-length target (scale-free either way)."""
    if kind == "cosine":
        per = 1.0 - F.cosine_similarity(projected, target, dim=-1)
    else:
        per = (projected - F.normalize(target, dim=-1)).pow(2).sum(-1)
    if weights is None:
        return per.mean()
    return (per * weights).sum() / weights.sum().clamp(min=1e-12)
