"""Bezier and polygonal-chain curves between two fixed endpoints with trainable control points (spec §9).

phi(t) = (1-t)^(n+1) theta1 + sum_i C(n+1, i) t^i (1-t)^(n+1-i) theta_i + t^(n+1) theta2 (Garipov et al. 2018).
The loss at phi(t) is computed with `torch.func.functional_call`, so only the control points get gradients;
for evaluation phi(t) is written into the live parameters in place (ends copied: exact at t=0 and t=1).
"""

from __future__ import annotations

import math

import torch
from lmlab.errors import LmlabError
from torch import nn

from mode_connectivity.models import check_same_keys

CURVES = ("bezier", "polychain")


def bernstein_weights(t: float | torch.Tensor, n_bends: int) -> torch.Tensor:
    """Weights of (theta1, theta_1..theta_n, theta2) for a Bezier curve of degree n+1 at t."""
    t = torch.as_tensor(t, dtype=torch.float64)
    d = n_bends + 1
    return torch.stack([math.comb(d, i) * t**i * (1 - t) ** (d - i) for i in range(d + 1)])


def polychain_weights(t: float | torch.Tensor, n_bends: int) -> torch.Tensor:
    """Weights of a piecewise-linear path through n control points at equal spacing in t."""
    t = float(t)
    d = n_bends + 1
    w = torch.zeros(d + 1, dtype=torch.float64)
    if t >= 1.0:
        w[-1] = 1.0
        return w
    seg = min(int(t * d), d - 1)
    local = t * d - seg
    w[seg] = 1 - local
    w[seg + 1] = local
    return w


def curve_weights(kind: str, t: float, n_bends: int) -> torch.Tensor:
    if kind == "bezier":
        return bernstein_weights(t, n_bends)
    if kind == "polychain":
        return polychain_weights(t, n_bends)
    raise LmlabError(f"--curve must be one of {', '.join(CURVES)}, not {kind!r}")


class Curve(nn.Module):
    """Endpoints as fixed buffers, `n_bends` trainable control points per tensor (all fp32)."""

    def __init__(
        self,
        theta1: dict[str, torch.Tensor],
        theta2: dict[str, torch.Tensor],
        n_bends: int = 1,
        kind: str = "bezier",
        init: str = "chord",
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        check_same_keys(theta1, theta2, "endpoint 1", "endpoint 2")
        if n_bends < 1:
            raise LmlabError(f"--bend_num must be >= 1, got {n_bends}")
        curve_weights(kind, 0.0, n_bends)
        self.kind, self.n_bends = kind, n_bends
        self.names = sorted(theta1)
        for j, k in enumerate(self.names):  # buffers: they move with the module and never get gradients
            self.register_buffer(f"start{j}", theta1[k].detach().float().clone())
            self.register_buffer(f"end{j}", theta2[k].detach().float().clone())
        self.bends = nn.ParameterList()
        for i in range(1, n_bends + 1):
            frac = i / (n_bends + 1)
            ps = nn.ParameterDict()
            start, end = self.start, self.end
            for j, k in enumerate(self.names):
                if init == "chord":
                    v = torch.lerp(start[k], end[k], frac)
                elif init == "normal":
                    v = torch.randn(self.start[k].shape, generator=generator) * init_std
                else:
                    raise LmlabError(f"--curve_init must be chord or normal, not {init!r}")
                ps[f"p{j}"] = nn.Parameter(v)
            self.bends.append(ps)

    @property
    def start(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"start{j}") for j, k in enumerate(self.names)}

    @property
    def end(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"end{j}") for j, k in enumerate(self.names)}

    def point(self, t: float) -> dict[str, torch.Tensor]:
        """phi(t) as a dict of tensors (differentiable in the control points; exact copies at the ends)."""
        if t == 0.0:
            return dict(self.start)
        if t == 1.0:
            return dict(self.end)
        w = curve_weights(self.kind, t, self.n_bends).tolist()
        out = {}
        start, end = self.start, self.end
        for j, k in enumerate(self.names):
            v = w[0] * start[k] + w[-1] * end[k]
            for i in range(self.n_bends):
                if w[i + 1] != 0.0:
                    v = v + w[i + 1] * self.bends[i][f"p{j}"]
            out[k] = v
        return out

    def control_points(self) -> list[dict[str, torch.Tensor]]:
        return [{k: b[f"p{j}"].detach() for j, k in enumerate(self.names)} for b in self.bends]

    def load_control_points(self, points: list[dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for b, pts in zip(self.bends, points, strict=True):
                for j, k in enumerate(self.names):
                    b[f"p{j}"].copy_(pts[k])


class CurveSweep:
    """Write phi(t) into live tensors in place (evaluation along the curve)."""

    def __init__(self, curve: Curve, targets: dict[str, torch.Tensor]):
        check_same_keys(targets, curve.start, "the model", "the curve")
        self.curve, self.targets = curve, targets

    @torch.no_grad()
    def set(self, t: float) -> None:
        for k, v in self.curve.point(t).items():
            self.targets[k].copy_(v.to(self.targets[k].dtype))


def curve_loss(model: nn.Module, curve: Curve, t: float, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Task loss of `model` with the curve tensors replaced by phi(t) (functional_call; tied weights stay tied)."""
    from torch.func import functional_call

    params = curve.point(t)
    out = functional_call(model, params, args=(), kwargs=batch, tie_weights=True, strict=False)
    return out.loss
