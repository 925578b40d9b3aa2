"""Masked-LM corruption shared by the packages (BERT's 80/10/10).

Which positions a masked LM predicts is each method's own choice (a Bernoulli draw per token as in BERT and
`bernoulli_positions`, an exact count per row, XLM's frequency-smoothed draw); what happens to the chosen
positions is the same everywhere (`corrupt`): [MASK] with probability `mask_token_prob`, a random token with
`random_token_prob`, unchanged otherwise. Labels hold the original id at chosen positions and -100 elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def bernoulli_positions(maskable: Tensor, prob: float, generator: torch.Generator | None = None) -> Tensor:
    """Each position where `maskable` is true, independently with probability `prob` (bool, same shape)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"the masking probability must be in [0, 1], got {prob}")
    return (torch.rand(maskable.shape, device=maskable.device, generator=generator) < prob) & maskable


def corrupt(
    ids: Tensor,
    selected: Tensor,
    *,
    mask_token_id: int,
    random_ids: int | Tensor,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """(corrupted ids, labels) for the chosen positions `selected` of `ids`. `random_ids` is the vocabulary size
    (random tokens uniform over every id) or a 1-D tensor of the ids a random token may take (e.g. no specials)."""
    if not (0.0 <= mask_token_prob <= 1.0 and 0.0 <= random_token_prob <= 1.0):
        raise ValueError(
            f"mask/random token probabilities must be in [0, 1], got {mask_token_prob}, {random_token_prob}"
        )
    if mask_token_prob + random_token_prob > 1.0 + 1e-9:
        raise ValueError("mask_token_prob + random_token_prob must be at most 1")
    u = torch.rand(ids.shape, device=ids.device, generator=generator)
    to_mask = selected & (u < mask_token_prob)
    to_random = selected & (u >= mask_token_prob) & (u < mask_token_prob + random_token_prob)
    allowed = torch.arange(random_ids, device=ids.device) if isinstance(random_ids, int) else random_ids
    draws = allowed[torch.randint(0, allowed.numel(), ids.shape, device=ids.device, generator=generator)]
    out = ids.masked_fill(to_mask, mask_token_id)
    out = torch.where(to_random, draws.to(ids.dtype), out)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return out, labels
