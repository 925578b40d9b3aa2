"""MLM corruption: exact-count selection, then 80% [MASK] / 10% random / 10% unchanged among selected positions.

`scheme="bert"` (default) fixes three things of the reference (`engine/tasks/pretraining/mlm_headless.py`):
random replacement is applied to selected positions only (the reference also puts 10% noise on the context),
labels are always the original ids (the reference reads vanilla labels from the randomised input), and the
mask id and special ids come from the tokenizer. `scheme="reference"` reproduces the reference's order of
operations exactly, with `reference_label_bug=True` to also reproduce its label bug.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from lmlab.masking import corrupt
from torch import Tensor

SCHEMES = ("bert", "reference")


@dataclass
class MaskedBatch:
    """`input_ids`: the corrupted input; `labels`: original id at selected positions, -100 elsewhere;
    `mask`: bool, the selected (predicted) positions."""

    input_ids: Tensor
    labels: Tensor
    mask: Tensor


def _rand(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, device=device, generator=generator)


def select_positions(special: Tensor, mask_prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Exactly ceil(mask_prob * n_maskable) positions per row, uniformly among the non-special positions
    (top-k of random scores), capped at ceil(mask_prob * T)."""
    rows, length = special.shape
    n_maskable = (~special).sum(dim=1)
    k = torch.ceil(n_maskable.double() * mask_prob).long().clamp(max=math.ceil(mask_prob * length))
    scores = _rand((rows, length), special.device, generator)
    scores = scores.masked_fill(special, -1.0)
    order = scores.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(length, device=special.device).expand(rows, length).contiguous()
    )
    return (ranks < k.unsqueeze(1)) & ~special


def mask_tokens(
    input_ids: Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: Iterable[int] = (),
    mask_prob: float = 0.15,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    scheme: str = "bert",
    generator: torch.Generator | None = None,
    reference_label_bug: bool = False,
    exclude: Tensor | None = None,
) -> MaskedBatch:
    """Corrupt a (B, T) batch of token ids for masked language modelling (see the module docstring).

    `exclude` (B, T) bool marks further positions that must not be selected (padding)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    for name, p in (
        ("mask_prob", mask_prob),
        ("mask_token_prob", mask_token_prob),
        ("random_token_prob", random_token_prob),
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if scheme == "bert" and mask_token_prob + random_token_prob > 1.0:
        raise ValueError("mask_token_prob + random_token_prob must be at most 1")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    device = input_ids.device
    specials = sorted({int(i) for i in special_token_ids if i is not None and 0 <= int(i) < vocab_size})
    special_t = torch.tensor(specials, dtype=input_ids.dtype, device=device)
    is_special = (
        torch.isin(input_ids, special_t) if specials else torch.zeros_like(input_ids, dtype=torch.bool)
    )
    if exclude is not None:
        is_special = is_special | exclude.to(torch.bool)
    allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    if specials:
        allowed[special_t] = False
    original = input_ids
    if scheme == "reference":
        # step 2: ~10% of ALL positions get a uniform random id; draws that are special ids are skipped
        noise = _rand(tuple(input_ids.shape), device, generator) < random_token_prob
        draws = torch.randint(0, vocab_size, tuple(input_ids.shape), device=device, generator=generator)
        noise &= allowed[draws]
        corrupted = torch.where(noise, draws, input_ids)
        randomised = corrupted.clone()
        selected = select_positions(is_special, mask_prob, generator)
        to_mask = selected & (_rand(tuple(input_ids.shape), device, generator) < mask_token_prob)
        corrupted = corrupted.masked_fill(to_mask, mask_token_id)
        label_source = randomised if reference_label_bug else original
        labels = torch.where(selected, label_source, torch.full_like(original, -100))
    else:  # BERT's 80/10/10 on the chosen positions, as every lmlab package does it
        selected = select_positions(is_special, mask_prob, generator)
        corrupted, labels = corrupt(
            original,
            selected,
            mask_token_id=mask_token_id,
            random_ids=allowed.nonzero().squeeze(1),
            mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob,
            generator=generator,
        )
    return MaskedBatch(input_ids=corrupted, labels=labels, mask=selected)
