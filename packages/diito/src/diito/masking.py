"""MLM corruption, XLM/DistilBERT style, with selection probabilities smoothed by corpus token counts (spec 4.1).

w[v] = max(count[v], 1) ** -smoothing, 0 for special tokens; n = ceil(mask_prop * real tokens) distinct positions
drawn without replacement proportionally to w; each is masked (word_mask), kept (word_keep) or replaced by a
uniform random id (word_rand), by lmlab.masking.corrupt. The reference's rounding of n to a multiple of 8 under
fp16 is dropped.
"""

from __future__ import annotations

import math

import torch
from lmlab.masking import corrupt


def token_weights(counts: torch.Tensor, special_ids: list[int], smoothing: float = 0.7) -> torch.Tensor:
    """Selection weight per vocab id: max(count, 1) ** -smoothing, zero for special ids."""
    w = counts.double().clamp(min=1).pow(-smoothing)
    w[torch.tensor(sorted(set(special_ids)), dtype=torch.long)] = 0.0
    return w.float()


def mlm_mask(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    weights: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    mask_prop: float = 0.15,
    word_mask: float = 0.8,
    word_keep: float = 0.1,
    word_rand: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(corrupted ids, labels with -100 off the selected positions, selected mask B x T)."""
    if abs(word_mask + word_keep + word_rand - 1.0) > 1e-6:
        raise ValueError("--word_mask + --word_keep + --word_rand must be 1")
    B, T = ids.shape
    real = torch.arange(T)[None, :] < lengths[:, None]
    probs = weights[ids] * real
    n = math.ceil(mask_prop * int(lengths.sum()))
    n = min(n, int((probs > 0).sum()))
    selected = torch.zeros(B * T, dtype=torch.bool)
    if n > 0:
        idx = torch.multinomial(probs.flatten(), n, replacement=False, generator=generator)
        selected[idx] = True
    selected = selected.view(B, T)
    out, labels = corrupt(
        ids,
        selected,
        mask_token_id=mask_id,
        random_ids=vocab_size,
        mask_token_prob=word_mask,
        random_token_prob=word_rand,
        generator=generator,
    )
    return out, labels, selected
