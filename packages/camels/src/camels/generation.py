"""Answer generation with a KV cache over left-padded batches: greedy, beam search, and the reference's diverse
(group) beam search with a Hamming diversity penalty, which current transformers no longer ships offline.

Semantics follow transformers 4.27 (the reference's version): per-step candidates = top 2·group_size of
(beam score + log-softmax − diversity_penalty × how often earlier groups chose the token at this step),
finished hypotheses collected per input in one pool of `num_beams`, early stopping once the pool is full, and
the running beams added to the pool at the length limit. Hypothesis score = sum of log-probs / length^lp with
length = prompt + generated tokens (`length_norm="full"`, 4.27's convention; `"generated"` counts only new
tokens, like current transformers). Returned sequences hold new tokens only, without EOS or padding.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from camels.weighting import position_ids_from_mask

STRATEGIES = ("group_beam", "beam", "greedy")


def _forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    pos = position_ids_from_mask(mask)[:, -ids.shape[1] :]
    # transformers 5 renames past_key_values to cache (the old name warns on every call, then goes in 5.40)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{name: cache})
    return out.logits[:, -1].float(), getattr(out, name)


@torch.no_grad()
def generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    strategy: str = "group_beam",
    num_beams: int = 12,
    num_beam_groups: int = 4,
    diversity_penalty: float = 10.0,
    length_penalty: float = 1.0,
    max_new_tokens: int = 16,
    eos_token_id: int | None = None,
    num_return_sequences: int = 1,
    length_norm: str = "full",
) -> list[list[int]]:
    """New tokens for every left-padded prompt (num_return_sequences lists per prompt, best first)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    eos = eos_token_id if eos_token_id is not None else model.config.eos_token_id
    was_training = model.training
    model.eval()
    try:
        if strategy == "greedy":
            return _greedy(model, input_ids, attention_mask, max_new_tokens, eos)
        groups = 1 if strategy == "beam" else num_beam_groups
        if num_beams % groups:
            raise ValueError(f"num_beams ({num_beams}) must be divisible by num_beam_groups ({groups})")
        penalty = 0.0 if strategy == "beam" else diversity_penalty
        return _beam(
            model,
            input_ids,
            attention_mask,
            num_beams,
            groups,
            penalty,
            length_penalty,
            max_new_tokens,
            eos,
            num_return_sequences,
            length_norm,
        )
    finally:
        model.train(was_training)


def _cut(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[: tokens.index(eos)] if eos is not None and eos in tokens else tokens


def _greedy(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, max_new: int, eos: int | None
) -> list[list[int]]:
    B = ids.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    logits, cache = _forward(model, ids, mask, None)
    for _ in range(max_new):
        nxt = logits.argmax(-1)
        for b in range(B):
            if not finished[b]:
                out[b].append(int(nxt[b]))
        if eos is not None:
            finished |= nxt == eos
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=mask.device)], 1)
        logits, cache = _forward(model, nxt[:, None], mask, cache)
    return [_cut(o, eos) for o in out]


class _Pool:
    """Finished hypotheses of one input (capacity num_beams), best kept."""

    def __init__(self, capacity: int):
        self.capacity, self.items = capacity, []  # (score, tokens)

    def add(self, score: float, tokens: list[int]) -> None:
        if len(self.items) < self.capacity or score > min(s for s, _ in self.items):
            self.items.append((score, tokens))
            if len(self.items) > self.capacity:
                self.items.remove(min(self.items, key=lambda x: x[0]))

    def full(self) -> bool:
        return len(self.items) >= self.capacity


def _beam(model, ids, mask, nb, groups, penalty, lp, max_new, eos, n_return, length_norm) -> list[list[int]]:
    B, device = ids.shape[0], ids.device
    gs = nb // groups
    prompt_len = mask.sum(-1).tolist()
    ids = ids.repeat_interleave(nb, 0)
    mask = mask.repeat_interleave(nb, 0)
    scores = torch.full((B, nb), -1e9, device=device)
    scores[:, ::gs] = 0.0  # one live beam per group at the start
    tokens: list[list[list[int]]] = [[[] for _ in range(nb)] for _ in range(B)]
    pools = [_Pool(nb) for _ in range(B)]
    done = [False] * B
    logits, cache = _forward(model, ids, mask, None)
    for step in range(max_new):
        logp = torch.log_softmax(logits, -1).view(B, nb, -1)
        V = logp.shape[-1]
        new_scores = scores.clone()
        src = torch.arange(nb, device=device).repeat(B, 1)
        chosen = torch.full((B, nb), eos if eos is not None else 0, dtype=torch.long, device=device)
        freq = torch.zeros(B, V, device=device)
        new_tokens = [[list(t) for t in row] for row in tokens]
        for g in range(groups):
            beams = slice(g * gs, (g + 1) * gs)
            cand = logp[:, beams] - penalty * freq[:, None, :] + scores[:, beams, None]
            top, idx = cand.reshape(B, -1).topk(2 * gs, dim=-1)
            for b in range(B):
                if done[b]:
                    continue
                kept = 0
                for rank in range(2 * gs):
                    beam = g * gs + int(idx[b, rank]) // V
                    tok = int(idx[b, rank]) % V
                    score = float(top[b, rank])
                    if eos is not None and tok == eos:
                        if rank >= gs:
                            continue
                        length = len(tokens[b][beam]) + (prompt_len[b] if length_norm == "full" else 0)
                        pools[b].add(score / max(length, 1) ** lp, list(tokens[b][beam]))
                        continue
                    slot = g * gs + kept
                    new_scores[b, slot], src[b, slot], chosen[b, slot] = score, beam, tok
                    new_tokens[b][slot] = [*tokens[b][beam], tok]
                    kept += 1
                    if kept == gs:
                        break
                freq[b].index_add_(0, chosen[b, beams], torch.ones(gs, device=device))
        for b in range(B):
            if not done[b] and pools[b].full():
                done[b] = True
        scores, tokens = new_scores, new_tokens
        if all(done) or step == max_new - 1:
            break
        flat = (src + torch.arange(B, device=device)[:, None] * nb).flatten()
        cache.reorder_cache(flat)
        mask = torch.cat([mask, torch.ones(B * nb, 1, dtype=mask.dtype, device=device)], 1)
        logits, cache = _forward(model, chosen.flatten()[:, None], mask, cache)
    results = []
    for b in range(B):
        if not done[b]:
            for beam in range(nb):
                length = len(tokens[b][beam]) + (prompt_len[b] if length_norm == "full" else 0)
                pools[b].add(float(scores[b, beam]) / max(length, 1) ** lp, tokens[b][beam])
        ranked = sorted(pools[b].items, key=lambda x: -x[0])
        results.extend(_cut(t, eos) for _, t in ranked[:n_return])
    return results
