"""The contrastive weight tying (CWT) loss and the balanced cross-entropy of the GLUE protocol.

Differences from the reference (`engine/tasks/pretraining/gpt_headless.py`): the reference exponentiates raw
logits and takes `log(exp_diag / sum + 1e-9)`, which overflows above a logit of ~88; here the loss is a
`cross_entropy` over the K x K logits (log-sum-exp), always in float32; the K x K product itself runs in the
autocast dtype (bf16 on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NEGATIVES = ("all", "unique")


def cwt_loss(
    pred: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    negatives: str = "all",
    target_ids: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Contrastive weight tying loss over K predicted positions.

    `pred` (K, D): final hidden states; `target` (K, D): input embeddings of the tokens to predict (not
    detached, so gradient reaches the embedding matrix through the targets). Row s is scored against every
    column t (raw dot products / temperature) and the positive is the diagonal.

    negatives="all" (paper, default): columns are positions, so a token occurring c times appears c times in
    every denominator, including c-1 copies of the positive (the loss floor is mean log c).
    negatives="unique" (ablation): each distinct id of `target_ids` is one column (a sampled softmax over the
    micro-batch's distinct tokens); its embedding is taken from the first position holding it.
    """
    if pred.dim() != 2 or target.dim() != 2 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both be (K, D), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
    if negatives == "all":
        candidates = target
        labels = torch.arange(pred.shape[0], device=pred.device)
    else:
        if target_ids is None:
            raise ValueError('negatives="unique" needs target_ids (the token id of every target row)')
        unique, labels = torch.unique(target_ids, return_inverse=True)
        first = torch.full((unique.numel(),), target_ids.numel(), dtype=torch.long, device=pred.device)
        first = first.scatter_reduce(
            0, labels, torch.arange(target_ids.numel(), device=pred.device), reduce="amin"
        )
        candidates = target[first]
    # The K x K product runs in the autocast dtype (bf16 tensor cores on a GPU: an fp32 product here made the
    # loss slower than the vocabulary head it replaces); the log-sum-exp always runs in float32.
    logits = (pred @ candidates.T).float()
    if temperature != 1.0:
        logits = logits / temperature
    return F.cross_entropy(logits, labels, reduction=reduction)


def cwt_retrieval_accuracy(pred: Tensor, target: Tensor, target_ids: Tensor) -> Tensor:
    """Share of rows whose arg-max column holds the same token id as the row's own target (in-batch
    retrieval accuracy; the reference logs accuracy only for vanilla runs)."""
    with torch.no_grad():
        best = (pred @ target.T).argmax(dim=-1)
        return (target_ids[best] == target_ids).float().mean()


def balanced_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Class-balanced cross-entropy (paper App. E.1) with class frequencies taken from the batch labels.

    Normalised as the mean, over the classes present in the batch, of each class's mean cross-entropy (the
    paper's sum_c L_c / w_c divided by batch_size * classes_present). Labels of -100 are ignored.
    """
    logits = logits.float()
    keep = labels != -100
    logits, labels = logits[keep], labels[keep]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    per_example = F.cross_entropy(logits, labels, reduction="none")
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(classes.numel(), device=logits.device).index_add(0, inverse, per_example)
    counts = torch.zeros(classes.numel(), device=logits.device).index_add(
        0, inverse, torch.ones_like(per_example)
    )
    return (sums / counts).mean()
