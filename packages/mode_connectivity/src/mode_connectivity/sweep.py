"""The in-place interpolation sweep engine (spec §6, §12).

Both endpoints are loaded once and kept as fp32 tensors on the eval device; at each grid point a,
lerp(theta1, theta2, a) is written into the live parameter storage in place (`torch._foreach_lerp_`), under
no_grad. Ends are copied, so a=0 gives theta1 and a=1 gives theta2 bit for bit. Only the tensors handed to the
engine are touched (the delta tensors for adapters/LoRA), so the frozen backbone never changes. Tied weights
are handed over once (their storage is shared), so they stay tied. Nothing is rebuilt or re-read per point.
"""

from __future__ import annotations

import numpy as np
import torch
from lmlab.errors import LmlabError

from mode_connectivity.models import check_same_keys


def interpolation_grid(points: int) -> list[float]:
    """`points` evenly spaced values from 0 to 1 rounded to 3 decimals (26 -> 0.0, 0.04, ..., 1.0)."""
    if points < 2:
        raise LmlabError(f"--itpl_points must be at least 2 (both ends), got {points}")
    return [round(float(x), 3) for x in np.linspace(0.0, 1.0, points)]


class InterpolationSweep:
    """Writes (1-a)*theta1 + a*theta2 into `targets` (live tensors, aligned by name) in place."""

    def __init__(
        self,
        targets: dict[str, torch.Tensor],
        theta1: dict[str, torch.Tensor],
        theta2: dict[str, torch.Tensor],
        names: tuple[str, str] = ("load_PET_path_1", "load_PET_path_2"),
    ):
        check_same_keys(theta1, theta2, names[0], names[1])
        check_same_keys(targets, theta1, "the model", names[0])
        self.names = sorted(targets)
        self.targets = [targets[k] for k in self.names]
        self.start = [theta1[k].to(self.targets[i].device, torch.float32) for i, k in enumerate(self.names)]
        self.end = [theta2[k].to(self.targets[i].device, torch.float32) for i, k in enumerate(self.names)]
        self._fast = (
            all(t.dtype == torch.float32 for t in self.targets) and len({t.device for t in self.targets}) <= 1
        )

    @torch.no_grad()
    def set(self, a: float) -> None:
        if a == 0.0:
            torch._foreach_copy_(self.targets, [s.to(t.dtype) for s, t in zip(self.start, self.targets)])
            return
        if a == 1.0:
            torch._foreach_copy_(self.targets, [e.to(t.dtype) for e, t in zip(self.end, self.targets)])
            return
        if self._fast:
            torch._foreach_copy_(self.targets, self.start)
            torch._foreach_lerp_(self.targets, self.end, float(a))
        else:
            for t, s, e in zip(self.targets, self.start, self.end, strict=True):
                t.copy_(torch.lerp(s, e, float(a)))


def interpolate_state_dicts(
    theta1: dict[str, torch.Tensor], theta2: dict[str, torch.Tensor], a: float
) -> dict[str, torch.Tensor]:
    """Out-of-place interpolation (used by the naive baseline): exact at a=0 and a=1."""
    check_same_keys(theta1, theta2, "theta1", "theta2")
    if a == 0.0:
        return {k: v.clone() for k, v in theta1.items()}
    if a == 1.0:
        return {k: v.clone() for k, v in theta2.items()}
    return {k: torch.lerp(theta1[k].float(), theta2[k].float(), float(a)).to(theta1[k].dtype) for k in theta1}
