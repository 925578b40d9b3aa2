"""Evaluation of a T5 text-to-text model on one tokenised split (spec §2.4): the task metric, per-example raw
scores and the teacher-forced loss; greedy generation (default) or candidate ranking; candidate probabilities
for dataset cartography (§8.1).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from mode_connectivity.data import EncodedSplit, eval_batches, format_target
from mode_connectivity.metrics import evaluate_predictions, raw_scores


@dataclass
class EvalResult:
    metric: float
    loss: float
    predictions: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class CandidateScorer:
    """Scores every candidate label string with teacher forcing: the sum of log-probs of its tokens after
    the prefix shared by all candidates (EOS excluded); softmax over candidates gives p(candidate)."""

    def __init__(self, tokenizer, candidates: list[str], lowercase: bool = False, another_bos: bool = False):
        self.candidates = list(candidates)
        ids = [tokenizer(format_target(c, lowercase, another_bos)).input_ids for c in self.candidates]
        eos = tokenizer.eos_token_id
        ids = [list(x) for x in ids]
        bodies = [x[:-1] if x and x[-1] == eos else x for x in ids]
        shared = 0
        while all(len(b) > shared for b in bodies) and len({b[shared] for b in bodies}) == 1:
            shared += 1
        self.ids = ids
        self.score_from = shared
        self.body_len = [len(b) for b in bodies]

    @torch.no_grad()
    def log_probs(self, model: nn.Module, batch: dict[str, torch.Tensor], bf16: bool = False) -> torch.Tensor:
        """(batch, n_candidates) summed log-probs of each candidate's scored tokens."""
        device = _device(model)
        inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        bsz = inputs["input_ids"].shape[0]
        with _autocast(device, bf16):
            enc = model.get_encoder()(**inputs)
            out = torch.zeros(bsz, len(self.candidates), device=device)
            for c, ids in enumerate(self.ids):
                labels = torch.tensor(ids, device=device).unsqueeze(0).repeat(bsz, 1)
                # T5 skips its encoder when given encoder_outputs; input_ids only size peft's prefix batch
                logits = model(**inputs, encoder_outputs=enc, labels=labels).logits
                lp = torch.log_softmax(logits.float(), dim=-1)
                tok = lp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
                out[:, c] = tok[:, self.score_from : self.body_len[c]].sum(-1)
        return out


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: EncodedSplit,
    tokenizer,
    metric: str,
    batch_size: int = 32,
    eval_mode: str = "generate",
    max_output_length: int = 64,
    scorer: CandidateScorer | None = None,
    bf16: bool = False,
    batches: list | None = None,
) -> EvalResult:
    """Metric + mean loss (token-mean CE per batch, averaged over batches) + per-example predictions/scores.
    Pass precomputed `batches` (from `eval_batches`) to avoid re-collating at every sweep point."""
    was_training = model.training
    model.eval()
    device = _device(model)
    batches = batches if batches is not None else eval_batches(split, batch_size)
    preds: list[str] = [""] * len(split)
    losses = []
    for idx, batch in batches:
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device, bf16):
            out = model(**b)
        losses.append(float(out.loss.float()))
        if eval_mode == "rank":
            assert scorer is not None, "eval_mode rank needs a CandidateScorer"
            lp = scorer.log_probs(model, b, bf16)
            choice = lp.argmax(-1).tolist()
            texts = [scorer.candidates[c] for c in choice]
        else:
            with _autocast(device, bf16):
                gen = model.generate(
                    input_ids=b["input_ids"],
                    attention_mask=b["attention_mask"],
                    max_new_tokens=max_output_length,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                )
            texts = [t.strip() for t in tokenizer.batch_decode(gen, skip_special_tokens=True)]
        for i, t in zip(idx, texts, strict=True):
            preds[i] = t
    if was_training:
        model.train()
    score = evaluate_predictions(metric, preds, split.golds)
    per_example = raw_scores(metric, preds, split.golds)
    loss = float(sum(losses) / len(losses)) if losses else 0.0
    return EvalResult(metric=score, loss=loss, predictions=preds, scores=per_example)


@torch.no_grad()
def cartography_epoch(
    model: nn.Module,
    split: EncodedSplit,
    tokenizer,
    metric: str,
    scorer: CandidateScorer,
    batch_size: int = 32,
    eval_mode: str = "rank",
    max_output_length: int = 64,
) -> tuple[list[float], list[float]]:
    """Per training example (file order): 0/1 correctness of the prediction and p(gold) among candidates."""
    was_training = model.training
    model.eval()
    device = _device(model)
    conf = [0.0] * len(split)
    acc = [0.0] * len(split)
    gold_index = {c: i for i, c in enumerate(scorer.candidates)}
    for idx, batch in eval_batches(split, batch_size):
        b = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        probs = torch.softmax(scorer.log_probs(model, b), dim=-1)
        if eval_mode == "generate":
            gen = model.generate(**b, max_new_tokens=max_output_length, do_sample=False, num_beams=1)
            texts = [t.strip() for t in tokenizer.batch_decode(gen, skip_special_tokens=True)]
        else:
            texts = [scorer.candidates[c] for c in probs.argmax(-1).tolist()]
        for row, i in enumerate(idx):
            g = gold_index.get(split.golds[i][0])
            conf[i] = float(probs[row, g]) if g is not None else 0.0
            acc[i] = raw_scores(metric, [texts[row]], [split.golds[i]])[0]
    if was_training:
        model.train()
    return acc, conf
