"""The knowledge-distillation loss: learn the teacher's probabilities, not only its labels."""

from __future__ import annotations

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
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, argmax teacher).

    The T^2 factor keeps the soft term's gradients on the same scale as the hard term's for any T
    (Hinton et al., 2015). KL and CE are both means over the batch.
    """
    logits = student_logits.float()
    teacher_log_t = soften(teacher_probs, temperature)
    student_log_t = F.log_softmax(logits / temperature, dim=-1)
    kl = F.kl_div(student_log_t, teacher_log_t, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(logits, teacher_probs.argmax(dim=-1))
    return alpha * temperature**2 * kl + (1.0 - alpha) * ce
