"""Barrier metrics along a path (spec §10) and distances between checkpoints.

For a grid 0 = a_0 < ... < a_K = 1, metric m (higher is better) and loss L:
perf_barrier = max_k [(1-a_k) m(0) + a_k m(1) - m(a_k)], loss_barrier = max_k [L(a_k) - ((1-a_k) L(0) + a_k L(1))],
min_drop = min(m(0), m(1)) - min_k m(a_k). Ends contribute 0, so both barriers are >= 0 (a bulge above the chord
gives 0, not a negative barrier).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lmlab.errors import LmlabError


def barrier_metrics(
    xs: Sequence[float], metric: Sequence[float], loss: Sequence[float] | None = None, tol: float = 0.01
) -> dict[str, float | bool]:
    if len(xs) < 2 or len(xs) != len(metric):
        raise LmlabError("barrier metrics need at least 2 grid points and one metric value per point")
    if xs[0] != 0.0 or xs[-1] != 1.0:
        raise LmlabError("barrier metrics need a grid that starts at 0 and ends at 1")
    m0, m1 = metric[0], metric[-1]
    gaps = [m0 + a * (m1 - m0) - m for a, m in zip(xs, metric, strict=True)]  # chord; exact when m0 == m1
    k = max(range(len(gaps)), key=lambda i: gaps[i])
    out: dict[str, float | bool] = {
        "perf_barrier": max(0.0, gaps[k]),
        "perf_barrier_argmax_a": xs[k],
        "min_drop": min(m0, m1) - min(metric),
        "min_drop_argmin_a": xs[min(range(len(metric)), key=lambda i: metric[i])],
        "connected": max(0.0, gaps[k]) <= tol,
    }
    if loss is not None:
        l0, l1 = loss[0], loss[-1]
        lg = [lv - (l0 + a * (l1 - l0)) for a, lv in zip(xs, loss, strict=True)]
        j = max(range(len(lg)), key=lambda i: lg[i])
        out["loss_barrier"] = max(0.0, lg[j])
        out["loss_barrier_argmax_a"] = xs[j]
    return out


def flatten(tensors: dict[str, torch.Tensor], aliases: dict[str, str] | None = None) -> torch.Tensor:
    """Concatenate tensors in sorted-name order, tied duplicates (alias names, or identical storage) once."""
    aliases = aliases or {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    parts = []
    for name in sorted(tensors):
        if name in aliases and aliases[name] in tensors:
            continue
        t = tensors[name]
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        parts.append(t.detach().reshape(-1).to(torch.float64))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def distances(
    a: dict[str, torch.Tensor],
    b: dict[str, torch.Tensor],
    aliases: dict[str, str] | None = None,
) -> dict[str, float]:
    """L2 distance, cosine similarity, N and RMS = L2/sqrt(N) between two checkpoints (names must match)."""
    from mode_connectivity.models import check_same_keys

    check_same_keys(a, b, "--input1", "--input2")
    va, vb = flatten(a, aliases), flatten(b, aliases)
    n = va.numel()
    l2 = float(torch.linalg.vector_norm(va - vb))
    denom = float(torch.linalg.vector_norm(va) * torch.linalg.vector_norm(vb))
    cos = float(torch.dot(va, vb)) / denom if denom > 0 else float("nan")
    return {"l2": l2, "cosine_similarity": cos, "n_params": n, "rms": l2 / math.sqrt(n) if n else 0.0}
