"""The contrastive weight tying (CWT) loss and the balanced cross-entropy of the GLUE protocol.

Differences from the reference (`engine/tasks/pretraining/gpt_headless.py`): the reference exponentiates raw
logits and takes `log(exp_diag / sum + 1e-9)`, which overflows above a logit of ~88; here the loss is a
`cross_entropy` over the K x K logits (log-sum-exp), always in float32; the K x K product itself runs in the
autocast dtype (bf16 on a GPU). Negatives are the micro-batch on this device (paper, reference); the opt-in
`gather_negatives` uses every DDP rank's targets instead (see `gather_rows`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lmlab.training import rank_and_world_size
from torch import Tensor

NEGATIVES = ("all", "unique")


class _AllGather(torch.autograd.Function):
    """(W, K, D) stack of every rank's (K, D) `rows`; backward: the sum over ranks of the gradient of the
    stack, this rank's slice (an all-reduce, which every backend has, gloo included; public APIs only, as
    torch.distributed.nn.functional is deprecated)."""

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        out = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(out, rows.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_rows(rows: Tensor, ids: Tensor | None = None) -> tuple[Tensor, Tensor | None, int]:
    """Every rank's `rows` (K_r, D) concatenated in rank order, with gradient (a rank's rows receive the sum
    of every rank's gradient on them), the matching `ids` (K_r,) when given (no gradient), and the offset of
    this rank's first row. Ranks may hold different K_r: the sizes are gathered first, rows are padded to the
    largest K_r and the padding dropped (never a column of the softmax)."""
    rank, size = rank_and_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.empty_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    pad = max(sizes) - rows.shape[0]
    gathered = _AllGather.apply(F.pad(rows, (0, 0, 0, pad)))
    out = torch.cat([g[:k] for g, k in zip(gathered, sizes, strict=True)])
    out_ids = None
    if ids is not None:
        padded = F.pad(ids, (0, pad))
        all_ids = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(all_ids, padded)
        out_ids = torch.cat([g[:k] for g, k in zip(all_ids, sizes, strict=True)])
    return out, out_ids, sum(sizes[:rank])


def cwt_loss(
    pred: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    negatives: str = "all",
    target_ids: Tensor | None = None,
    reduction: str = "mean",
    gather_negatives: bool = False,
) -> Tensor:
    """Contrastive weight tying loss over K predicted positions.

    `pred` (K, D): final hidden states; `target` (K, D): input embeddings of the tokens to predict (not
    detached, so gradient reaches the embedding matrix through the targets). Row s is scored against every
    column t (raw dot products / temperature) and the positive is the diagonal.

    negatives="all" (paper, default): columns are positions, so a token occurring c times appears c times in
    every denominator, including c-1 copies of the positive (the loss floor is mean log c).
    negatives="unique" (ablation): each distinct id of `target_ids` is one column (a sampled softmax over the
    micro-batch's distinct tokens); its embedding is taken from the first position holding it.

    gather_negatives=True under torch.distributed with world size > 1: the columns are the targets of every
    rank (gathered with gradient; "unique" takes the distinct ids over all ranks), the rows stay this rank's.
    With reduction="mean" the local sum is scaled by world_size / (positions on all ranks), so that the DDP
    average of the ranks' gradients (and the mean of their losses) equals the single-process loss on the
    union of the micro-batches; "sum" and "none" return this rank's rows unscaled. Without torch.distributed
    or on one process the flag does nothing.
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
    if negatives == "unique" and target_ids is None:
        raise ValueError('negatives="unique" needs target_ids (the token id of every target row)')
    rows = torch.arange(pred.shape[0], device=pred.device)
    _, size = rank_and_world_size() if gather_negatives else (0, 1)
    gathered = size > 1
    if gathered:
        target, target_ids, offset = gather_rows(target, target_ids if negatives == "unique" else None)
        rows = rows + offset
    if negatives == "all":
        candidates, labels = target, rows
    else:
        unique, inverse = torch.unique(target_ids, return_inverse=True)
        first = torch.full((unique.numel(),), target_ids.numel(), dtype=torch.long, device=pred.device)
        first = first.scatter_reduce(
            0, inverse, torch.arange(target_ids.numel(), device=pred.device), reduce="amin"
        )
        candidates, labels = target[first], inverse[rows]
    # The K x K product runs in the autocast dtype (bf16 tensor cores on a GPU: an fp32 product here made the
    # loss slower than the vocabulary head it replaces); the log-sum-exp always runs in float32.
    logits = (pred @ candidates.T).float()
    if temperature != 1.0:
        logits = logits / temperature
    if gathered and reduction == "mean":
        return F.cross_entropy(logits, labels, reduction="sum") * (size / target.shape[0])
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
