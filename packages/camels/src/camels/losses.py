"""The three losses of CaMeLS: per-token NLL, the weighted LM loss with the reference's normalisation, and the
locality KL. All take logits of a causal LM over `input_ids` and compute in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bf16 inputs, unchanged for float32/float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


LOSS_NORMS = ("padded", "tokens", "weights")


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """-log p(x[b,t] | x[b,<t]) for t = 1..L-1 as a [B, L-1] tensor, 0 where the target is padding.

    Column j holds the loss of predicting token j+1 (the reference's alignment: the weight at position t
    multiplies the loss of predicting token t).
    """
    logits = _upcast(logits[:, :-1])
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view(targets.shape)
    mask = attention_mask[:, 1:].to(nll.dtype)
    return nll * mask


def weighted_lm_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    weights: torch.Tensor,
    denom: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_b Σ_{t≥1} w[b,t]·ℓ[b,t] / denom, denom defaulting to B·(L−1) of the given tensors.

    This is the reference's normalisation (a mean over every position, padding included). Callers that do not
    pad to `max_text_len` pass `denom = B·(max_text_len−1)` to get the reference value without the padding.
    The weight at position 0 is never used.
    """
    nll = token_nll(logits, input_ids, attention_mask)
    if denom is None:
        denom = input_ids.shape[0] * (input_ids.shape[1] - 1)
    return (weights[:, 1:].to(nll.dtype) * nll).sum() / denom


def loss_denominator(
    loss_norm: str, attention_mask: torch.Tensor, weights: torch.Tensor, max_text_len: int
) -> float | torch.Tensor:
    """The denominator of the weighted loss for `loss_norm` padded | tokens | weights (see the spec §2)."""
    if loss_norm == "padded":
        return float(attention_mask.shape[0] * (max_text_len - 1))
    if loss_norm == "tokens":
        return attention_mask[:, 1:].sum().clamp_min(1).to(torch.float32)
    if loss_norm == "weights":
        return (weights[:, 1:] * attention_mask[:, 1:]).sum().clamp_min(1e-12)
    raise ValueError(f"loss_norm must be one of {', '.join(LOSS_NORMS)}, got {loss_norm!r}")


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF-style causal-LM loss: mean NLL over every non-ignored (label != -100) target of the batch."""
    logits = _upcast(logits[:, :-1])
    targets = labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def kl_locality(pre_logits: torch.Tensor, post_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(p_pre ‖ p_post) summed over the vocabulary at every position with mask 1, averaged over those
    positions (float32). `pre_logits` come from the base before the update and carry no gradient."""
    pre = F.log_softmax(_upcast(pre_logits), dim=-1)
    post = F.log_softmax(_upcast(post_logits), dim=-1)
    kl = (pre.exp() * (pre - post)).sum(-1)
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)
