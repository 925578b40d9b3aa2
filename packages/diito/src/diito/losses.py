"""The DIITO loss terms (spec 4.3), computed in fp32 whatever the autocast dtype.

`select` is a boolean B x T mask of the positions M that count (non-pad base positions, or the MLM-selected ones
with --restrict_ce_to_mask); N = |M|. KL(p || q) with p the teacher's distribution, summed over the vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, select: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 / N * sum_{m in M} KL(softmax(t_m / T) || softmax(s_m / T))  (batchmean over the N selected rows)."""
    s = student_logits[select].float() / temperature
    t = teacher_logits[select].float() / temperature
    n = max(s.shape[0], 1)
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="sum", log_target=True)
    return kl * temperature**2 / n


def cosine_loss(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """1/N * sum_{m in M} (1 - cos(h_s[m], h_t[m]))."""
    if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError("alpha_cos / alpha_causal_cos need equal teacher and student hidden sizes")
    s = student_hidden[select].float()
    t = teacher_hidden[select].float()
    if s.shape[0] == 0:
        return s.sum()
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def mlm_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled positions (labels -100 elsewhere), mean."""
    return F.cross_entropy(student_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def clm_loss(student_logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits at p predict token p+1; pads ignored."""
    targets = ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(student_logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def mse_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """Sum of squared logit differences over M, divided by N (the parent code's alpha_mse term)."""
    s = student_logits[select].float()
    t = teacher_logits[select].float()
    return ((s - t) ** 2).sum() / max(s.shape[0], 1)
