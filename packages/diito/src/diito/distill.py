"""One DIITO micro-step's losses (spec section 4), independent of the training engine.

Teacher and student each run ONE forward call per micro-step: a plain pass over the base batch when both causal
weights are 0 (no source or intervened pass at all, unlike the reference), otherwise the fused interchange pass
of `sites.interchange_forward` over concat(base, source). The teacher runs under `torch.inference_mode()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diito import losses
from diito.sites import Sites, interchange_forward, interchange_forward_separate, plain_forward


@dataclass
class LossWeights:
    alpha_ce: float = 0.5
    alpha_mlm: float = 0.0
    alpha_cos: float = 0.0
    alpha_clm: float = 0.5
    alpha_mse: float = 0.0
    alpha_causal_ce: float = 0.0
    alpha_causal_cos: float = 0.0

    @property
    def causal(self) -> bool:
        return self.alpha_causal_ce > 0 or self.alpha_causal_cos > 0

    @property
    def needs_hidden(self) -> bool:
        return self.alpha_cos > 0 or self.alpha_causal_cos > 0


def _model_forward(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    sites: Sites | None,
    want_hidden: bool,
    convention: str,
    detach_source: bool,
    fused: bool,
):
    if sites is None:
        logits, hidden = plain_forward(model, batch["base_ids"], batch["base_mask"], want_hidden)
        return logits, hidden, None, None
    fn = interchange_forward if fused else interchange_forward_separate
    out = fn(
        model,
        batch["base_ids"],
        batch["base_mask"],
        batch["src_ids"],
        batch["src_mask"],
        sites,
        batch["P"],
        batch["Ps"],
        convention=convention,
        detach_source=detach_source,
    )
    return out.logits, out.hidden, out.int_logits, out.int_hidden


def distill_losses(
    teacher: nn.Module,
    student: nn.Module,
    batch: dict[str, torch.Tensor],
    weights: LossWeights,
    temperature: float = 2.0,
    teacher_sites: Sites | None = None,
    student_sites: Sites | None = None,
    convention: str = "consistent",
    detach_student_source: bool = False,
    restrict_ce_to_mask: bool = False,
    fused: bool = True,
) -> dict[str, torch.Tensor]:
    """All loss terms with a weight > 0 and their weighted sum under "loss" (not yet divided by accumulation)."""
    causal = weights.causal
    if causal and (teacher_sites is None or student_sites is None):
        raise ValueError("causal loss terms need teacher and student sites")
    t_sites = teacher_sites if causal else None
    s_sites = student_sites if causal else None
    hidden = weights.needs_hidden
    with torch.inference_mode():
        t_logits, t_hidden, t_int, t_int_hidden = _model_forward(
            teacher, batch, t_sites, hidden, convention, False, fused
        )
    s_logits, s_hidden, s_int, s_int_hidden = _model_forward(
        student, batch, s_sites, hidden, convention, detach_student_source, fused
    )
    mask = batch["base_mask"].bool()
    select = mask & batch["selected"] if restrict_ce_to_mask else mask
    out: dict[str, torch.Tensor] = {}
    if weights.alpha_ce > 0:
        out["loss_ce"] = losses.kl_loss(s_logits, t_logits, select, temperature)
    if weights.alpha_mlm > 0:
        out["loss_mlm"] = losses.mlm_loss(s_logits, batch["labels"])
    if weights.alpha_clm > 0:
        out["loss_clm"] = losses.clm_loss(s_logits, batch["base_ids"], batch["base_mask"])
    if weights.alpha_mse > 0:
        out["loss_mse"] = losses.mse_loss(s_logits, t_logits, select)
    if weights.alpha_cos > 0:
        out["loss_cos"] = losses.cosine_loss(s_hidden, t_hidden, mask)
    if weights.alpha_causal_ce > 0:
        out["loss_causal_ce"] = losses.kl_loss(s_int, t_int, select, temperature)
    if weights.alpha_causal_cos > 0:
        out["loss_causal_cos"] = losses.cosine_loss(s_int_hidden, t_int_hidden, mask)
    total = sum(getattr(weights, "alpha_" + name[len("loss_") :]) * value for name, value in out.items())
    out["loss"] = total
    return out
