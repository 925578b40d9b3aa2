"""Interchange positions (spec 4.2): boolean masks P (base) and P' (source), equal True counts per row.

Only real (non-pad) positions are ever chosen (the reference's random mode also drew padding). All vectorised.
"""

from __future__ import annotations

import torch


def interchange_counts(
    base_len: torch.Tensor, src_len: torch.Tensor, prop: float, max_token: int = -1
) -> torch.Tensor:
    """c_i = floor(prop * min(len_i, len'_i)), capped at max_token unless it is -1."""
    c = torch.floor(prop * torch.minimum(base_len, src_len).double()).long()
    if max_token != -1:
        c = c.clamp(max=max_token)
    return c


def _consecutive(
    lengths: torch.Tensor, counts: torch.Tensor, T: int, gen: torch.Generator | None
) -> torch.Tensor:
    span = (lengths - counts + 1).clamp(min=1)
    start = (torch.rand(lengths.shape, generator=gen, device=lengths.device) * span).long()
    start = torch.minimum(start, span - 1)
    ar = torch.arange(T, device=lengths.device).expand(len(lengths), T)
    return (ar >= start[:, None]) & (ar < (start + counts)[:, None])


def _random(lengths: torch.Tensor, counts: torch.Tensor, T: int, gen: torch.Generator | None) -> torch.Tensor:
    ar = torch.arange(T, device=lengths.device).expand(len(lengths), T)
    real = ar < lengths[:, None]
    keys = torch.rand((len(lengths), T), generator=gen, device=lengths.device)
    keys = torch.where(real, keys, torch.full_like(keys, 2.0))  # padding sorts last
    rank = keys.argsort(dim=1).argsort(dim=1)
    return (rank < counts[:, None]) & real


def sample_positions(
    base_len: torch.Tensor,
    src_len: torch.Tensor,
    T: int,
    prop: float = 0.3,
    max_token: int = -1,
    consecutive_only: bool = False,
    masked_positions: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    T_src: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, P') of shape B x T. With `masked_positions` (the MLM-selected positions, B x T), the base positions are
    those (capped at len'_i, keeping the first ones) and the source positions random real positions."""
    T_src = T if T_src is None else T_src
    if masked_positions is not None:
        sel = masked_positions & (torch.arange(T, device=base_len.device)[None, :] < base_len[:, None])
        sel = sel & (sel.long().cumsum(1) <= src_len[:, None])
        counts = sel.sum(1)
        return sel, _random(src_len, counts, T_src, generator)
    counts = interchange_counts(base_len, src_len, prop, max_token)
    if consecutive_only:
        return _consecutive(base_len, counts, T, generator), _consecutive(src_len, counts, T_src, generator)
    return _random(base_len, counts, T, generator), _random(src_len, counts, T_src, generator)
