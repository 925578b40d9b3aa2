"""Causal and masked LM objectives, headless (CWT), vanilla (CE) and mixed, for any Hugging Face model.

The anchor is the backbone's `last_hidden_state` (after GPT-NeoX's final LayerNorm, BERT's last layer; never
through BERT's MLM transform); targets are rows of `get_input_embeddings().weight`, not detached. In-batch
negatives are every predicted position of the micro-batch on this device (with `gather_negatives`, of every
DDP rank's micro-batch); excluded positions (padding, attention_mask 0) are neither anchors nor negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lmlab.errors import LmlabError
from torch import Tensor, nn

from headless_lm.losses import cwt_loss, cwt_retrieval_accuracy
from headless_lm.masking import MaskedBatch, mask_tokens
from headless_lm.modeling import backbone, lm_head


@dataclass
class LossOutput:
    total_loss: Tensor
    emb_loss: Tensor | None
    lm_loss: Tensor | None
    accuracy: Tensor | None
    num_predictions: int
    masked: MaskedBatch | None = None


def _hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    out = backbone(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def _check_positions(model: nn.Module, input_ids: Tensor) -> None:
    cfg = backbone(model).config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if limit is not None and input_ids.shape[1] > limit:
        raise LmlabError(
            f"sequences of {input_ids.shape[1]} tokens are longer than the model's {limit} positions; "
            "lower --max_seq_len or raise --model_max_seq_len"
        )


def _combine(
    model: nn.Module,
    pred: Tensor,
    target_ids: Tensor,
    ce_labels: Tensor,
    logits_fn,
    emb_loss_weight: float,
    ce_weight: float,
    temperature: float,
    negatives: str,
    predictor: nn.Module | None = None,
    compute_accuracy: bool = True,
    gather_negatives: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    emb_loss = lm_loss = None
    total = pred.new_zeros((), dtype=torch.float32)
    accuracy = None
    if pred.shape[0] == 0:
        raise LmlabError("no predicted positions in this batch (all padding?); check the data")
    if emb_loss_weight != 0:
        weight = backbone(model).get_input_embeddings().weight
        target = F.embedding(target_ids, weight)
        anchors = pred if predictor is None else predictor(pred)
        emb_loss = cwt_loss(
            anchors,
            target,
            temperature=temperature,
            negatives=negatives,
            target_ids=target_ids,
            gather_negatives=gather_negatives,
        )
        total = total + emb_loss_weight * emb_loss
        if compute_accuracy:  # a second (local) K x K product: skip it on steps that do not log
            accuracy = cwt_retrieval_accuracy(anchors, target, target_ids)
    if ce_weight != 0:
        if lm_head(model) is None:
            raise LmlabError("the LM loss weight is not 0 but the model is headless; build it with its head")
        logits = logits_fn()
        lm_loss = F.cross_entropy(logits.float(), ce_labels)
        total = total + ce_weight * lm_loss
        if compute_accuracy:
            accuracy = (logits.detach().argmax(-1) == ce_labels).float().mean()
    return total, emb_loss, lm_loss, accuracy


def causal_lm_loss(
    model: nn.Module,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    emb_loss_weight: float = 1.0,
    lm_loss_weight: float = 0.0,
    temperature: float = 1.0,
    negatives: str = "all",
    predictor: nn.Module | None = None,
    compute_accuracy: bool = True,
    gather_negatives: bool = False,
) -> LossOutput:
    """Next-token objective: anchors = hidden states at 0..T-2, targets = ids at 1..T-1, flattened over the
    micro-batch. total = emb_loss_weight * CWT + lm_loss_weight * CE (CE over the same positions).

    `predictor` (the reference's `emb_predictor`; None = identity) maps the anchors before the CWT loss only.
    `gather_negatives`: negatives from every DDP rank (see `losses.cwt_loss`)."""
    _check_positions(model, input_ids)
    hidden = _hidden(model, input_ids, attention_mask)
    anchors = hidden[:, :-1]
    targets = input_ids[:, 1:]
    if attention_mask is not None:
        valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
        pred, target_ids = anchors[valid], targets[valid]
    else:
        pred, target_ids = anchors.reshape(-1, anchors.shape[-1]), targets.reshape(-1)
    total, emb, lm, acc = _combine(
        model,
        pred,
        target_ids,
        target_ids,
        lambda: lm_head(model)(pred),
        emb_loss_weight,
        lm_loss_weight,
        temperature,
        negatives,
        predictor,
        compute_accuracy,
        gather_negatives,
    )
    return LossOutput(total, emb, lm, acc, int(target_ids.numel()))


def masked_lm_loss(
    model: nn.Module,
    input_ids: Tensor,
    *,
    attention_mask: Tensor | None = None,
    emb_loss_weight: float = 1.0,
    mlm_loss_weight: float = 0.0,
    temperature: float = 1.0,
    negatives: str = "all",
    masking: MaskedBatch | None = None,
    generator: torch.Generator | None = None,
    mask_token_id: int | None = None,
    vocab_size: int | None = None,
    full_head: bool = True,
    predictor: nn.Module | None = None,
    compute_accuracy: bool = True,
    gather_negatives: bool = False,
    **mask_kwargs,
) -> LossOutput:
    """Masked objective on a clean (B, T) batch: corrupt it (or use `masking`), anchors = hidden states at the
    selected positions, CWT targets and CE labels = the original ids there.

    `full_head=True` computes the vanilla head's logits at all B*T positions as HF's BERT does (what the paper
    compared against); False only at the selected positions (a fair "sparse" baseline, same loss value).
    `gather_negatives`: negatives from every DDP rank (see `losses.cwt_loss`).
    """
    _check_positions(model, input_ids)
    if masking is None:
        if mask_token_id is None:
            raise LmlabError(
                "masked_lm_loss needs mask_token_id (the tokenizer's mask token) or a MaskedBatch"
            )
        vocab = vocab_size or backbone(model).get_input_embeddings().weight.shape[0]
        exclude = None if attention_mask is None else ~attention_mask.bool()
        masking = mask_tokens(
            input_ids,
            vocab_size=vocab,
            mask_token_id=mask_token_id,
            generator=generator,
            exclude=exclude,
            **mask_kwargs,
        )
    hidden = _hidden(model, masking.input_ids, attention_mask)
    selected = masking.mask
    pred = hidden[selected]
    target_ids = input_ids[selected]
    labels = masking.labels[selected]

    def logits_fn() -> Tensor:
        head = lm_head(model)
        return head(hidden)[selected] if full_head else head(pred)

    total, emb, lm, acc = _combine(
        model,
        pred,
        target_ids,
        labels,
        logits_fn,
        emb_loss_weight,
        mlm_loss_weight,
        temperature,
        negatives,
        predictor,
        compute_accuracy,
        gather_negatives,
    )
    return LossOutput(total, emb, lm, acc, int(target_ids.numel()), masked=masking)
