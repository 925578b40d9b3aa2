"""The bilevel meta-step of CaMeLS with `torch.func.functional_call` (no `higher`).

Inner loop: SGD steps of the base model on the weighted LM loss of the batch's documents, starting from the
current base parameters θ₀ (constants: no gradient reaches them). Outer loss: answer NLL of the batch's questions
under the updated θ_K plus c_kl · KL(p_θ₀ ‖ p_θK) on a locality document. Two ways to get ∂outer/∂weights:

- `unroll`: keep every inner step's double-backward graph (what `higher` does in the reference);
- `adjoint`: store θ₀..θ_{K−1} only, then walk back with λ_K = ∇θ L_out(θ_K) and, for each step k,
  s_k = ⟨∇θ L_w,k(θ_{k−1}; w_k), λ_k⟩, ∂L/∂w_k = −α ∂s_k/∂w_k, λ_{k−1} = λ_k − α ∂s_k/∂θ (a Hessian-vector
  product). One step's graph alive at a time; dropout masks are replayed by restoring the RNG state.

Both are exact and agree to round-off. Batches are dicts: `doc_ids`, `doc_mask` (right-padded documents),
`qa_ids`, `qa_mask`, `qa_labels` (−100 on question and padding); locality batches `input_ids`,
`attention_mask` and optionally `loc_mask` (the positions whose KL counts; default the attention mask), or a
mapping name → such batch for several locality sets (web text and in-domain QA with `qa_loc`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lmlab.errors import LmlabError
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from camels.losses import answer_nll, kl_locality, loss_denominator, weighted_lm_loss

Params = dict[str, torch.Tensor]
META_GRAD_MODES = ("unroll", "adjoint")


@dataclasses.dataclass
class MetaConfig:
    """What the meta-step needs (the meta-train config carries the same names)."""

    inner_lr: float = 5e-4
    sequential_update: bool = True
    num_inner_steps: int = 1
    max_text_len: int = 1024
    loss_norm: str = "padded"
    meta_grad_mode: str = "unroll"
    inner_dropout: bool = True
    c_kl: float = 0.1
    c_norm: float = 0.0
    grad_acc_steps: int = 1
    pad_to_max: bool = False
    log_metrics: str = "cheap"
    adjoint_keep_last: int = 1


def base_params(model: torch.nn.Module, learned_layers: int = -1) -> Params:
    """The base model's parameters as detached leaves that require grad (so the inner tape can be built while
    the model's own parameters never receive a .grad). Tied weights appear once (named_parameters
    de-duplicates; functional_call keeps them tied). `learned_layers` ≥ 0 keeps only the last n transformer
    blocks, the final norm and the LM head trainable (the others stay the model's constants)."""
    named = dict(model.named_parameters())
    if learned_layers >= 0:
        named = {n: p for n, p in named.items() if _is_learned(n, model, learned_layers)}
    return {n: p.detach().requires_grad_() for n, p in named.items()}


def _is_learned(name: str, model: torch.nn.Module, n: int) -> bool:
    import re

    layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", 0)
    m = re.search(r"\.(h|layers)\.(\d+)\.", name)
    if m:
        return int(m.group(2)) >= layers - n
    return any(k in name for k in ("ln_f", "lm_head", "final_layer_norm", "norm.weight", "wte", "embed_out"))


def detach_params(params: Params) -> Params:
    return {n: p.detach().requires_grad_() for n, p in params.items()}


def model_logits(
    model: torch.nn.Module, params: Params, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    out = functional_call(
        model,
        params,
        args=(),
        kwargs={"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False},
    )
    return out.logits


def _cfg(cfg: Any, name: str, default: Any) -> Any:
    return getattr(cfg, name, default)


def doc_groups(docs: dict[str, torch.Tensor], cfg: Any) -> list[tuple[slice, int]]:
    """The inner steps of one pass: (rows, length) per step. Sequential: one document per step, cut to its own
    length (or padded to max_text_len with `pad_to_max`); batched: all rows, cut to the longest."""
    mask = docs["doc_mask"]
    max_len = int(_cfg(cfg, "max_text_len", 1024))
    pad = bool(_cfg(cfg, "pad_to_max", False))

    def length(rows: torch.Tensor) -> int:
        if pad:
            return max_len
        nz = rows.sum(0).nonzero()
        return min(int(nz.max()) + 1 if nz.numel() else 1, max_len)

    if _cfg(cfg, "sequential_update", True):
        return [(slice(b, b + 1), length(mask[b : b + 1])) for b in range(mask.shape[0])]
    return [(slice(0, mask.shape[0]), length(mask))]


def _cut(t: torch.Tensor, rows: slice, length: int, fill: int | float = 0) -> torch.Tensor:
    t = t[rows, :length]
    if t.shape[1] < length:
        t = torch.nn.functional.pad(t, (0, length - t.shape[1]), value=fill)
    return t


def step_loss(
    base_model: torch.nn.Module,
    params: Params,
    docs: dict[str, torch.Tensor],
    w: torch.Tensor,
    rows: slice,
    length: int,
    cfg: Any,
) -> torch.Tensor:
    """The weighted LM loss of one inner step (rows `rows`, cut/padded to `length`) under `params`."""
    ids, mask = _cut(docs["doc_ids"], rows, length), _cut(docs["doc_mask"], rows, length)
    w = _cut(w, rows, length) if w.shape[0] != ids.shape[0] or w.shape[1] != length else w
    logits = model_logits(base_model, params, ids, mask)
    denom = loss_denominator(_cfg(cfg, "loss_norm", "padded"), mask, w, int(_cfg(cfg, "max_text_len", 1024)))
    loss = weighted_lm_loss(logits, ids, mask, w, denom=denom)
    if not torch.isfinite(loss):
        raise NonFiniteInnerLoss(
            "the inner (weighted LM) loss is not finite; lower inner_lr or check the weights/inputs"
        )
    return loss


class NonFiniteInnerLoss(LmlabError):
    """An inner step's weighted LM loss is NaN or infinite (the meta-train module adds the step)."""


def _set_inner_mode(base_model: torch.nn.Module, cfg: Any) -> None:
    base_model.train(bool(_cfg(cfg, "inner_dropout", True)))


def _grads(loss: torch.Tensor, params: Params, create_graph: bool) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(
        loss, list(params.values()), create_graph=create_graph, allow_unused=True, materialize_grads=True
    )


def _schedule(docs: dict[str, torch.Tensor], cfg: Any) -> Iterator[tuple[slice, int]]:
    groups = doc_groups(docs, cfg)
    for _ in range(int(_cfg(cfg, "num_inner_steps", 1))):
        yield from groups


def inner_update(
    base_model: torch.nn.Module,
    params: Params,
    docs: dict[str, torch.Tensor],
    weights: torch.Tensor,
    cfg: Any,
    create_graph: bool = True,
) -> Params:
    """θ_K after the inner SGD steps θ_i = θ_{i−1} − α ∇θ L_w(θ_{i−1}). With `create_graph` the result is a
    differentiable function of `weights`; without, every step is detached (validation)."""
    lr = float(cfg.inner_lr)
    if "doc_ids" not in docs:  # also accept a plain {"input_ids", "attention_mask"} batch of documents
        docs = {"doc_ids": docs["input_ids"], "doc_mask": docs["attention_mask"]}
    _set_inner_mode(base_model, cfg)
    for rows, length in _schedule(docs, cfg):
        with torch.enable_grad():
            loss = step_loss(base_model, params, docs, weights, rows, length, cfg)
            grads = _grads(loss, params, create_graph)
        params = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        if not create_graph:
            params = detach_params(params)
    return params


def norm_penalty(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean_b (Σ_t (w−1)² mask / Σ mask)^{1/2} (the reference's optional c_norm term, from one, L2)."""
    mask = mask.to(weights.dtype)
    per_row = ((weights - 1.0) ** 2 * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    return per_row.sqrt().mean()


def loc_sets(loc_batch: dict[str, Any] | None) -> dict[str, dict[str, torch.Tensor]]:
    """The locality sets of a meta-step by name: a single batch is the web-text set `open_web_text`."""
    if loc_batch is None:
        return {}
    return {"open_web_text": loc_batch} if "input_ids" in loc_batch else dict(loc_batch)


def outer_loss(
    base_model: torch.nn.Module,
    params: Params,
    batch: dict[str, torch.Tensor],
    loc_batch: dict[str, Any] | None,
    pre_loc_logits: dict[str, torch.Tensor] | None,
    cfg: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_qa + c_kl · Σ_sets KL(pre ‖ post) / n_loc_sets over the locality sets, with the base in eval mode."""
    base_model.eval()
    qa_logits = model_logits(base_model, params, batch["qa_ids"], batch["qa_mask"])
    qa = answer_nll(qa_logits, batch["qa_labels"])
    total = qa
    metrics = {"qa_loss": float(qa.detach())}
    c_kl = float(_cfg(cfg, "c_kl", 0.1))
    if c_kl != 0 and pre_loc_logits:
        kls = []
        for name, loc in loc_sets(loc_batch).items():
            post = model_logits(base_model, params, loc["input_ids"], loc["attention_mask"])
            kl = kl_locality(pre_loc_logits[name], post, loc.get("loc_mask", loc["attention_mask"]))
            metrics[f"{name}_kl_div"] = float(kl.detach())
            kls.append(kl)
        total = total + c_kl * sum(kls) / len(kls)
    return total, metrics


def _pre_loc_logits(
    base_model: torch.nn.Module, params: Params, loc_batch: dict[str, Any] | None, cfg: Any
) -> dict[str, torch.Tensor] | None:
    sets = loc_sets(loc_batch)
    if not sets or float(_cfg(cfg, "c_kl", 0.1)) == 0:
        return None
    base_model.eval()
    with torch.no_grad():
        return {
            name: model_logits(base_model, params, loc["input_ids"], loc["attention_mask"]).detach()
            for name, loc in sets.items()
        }


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _adjoint(
    base_model: torch.nn.Module,
    params: Params,
    batch: dict[str, torch.Tensor],
    weights: torch.Tensor,
    loc_batch: dict[str, torch.Tensor] | None,
    cfg: Any,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, Params]:
    """Exact reverse-mode meta-gradient with one inner step's graph alive at a time.

    The last `adjoint_keep_last` steps (default 1) build their double-backward graph already in the forward
    pass and keep it, so they are not recomputed (time ↔ memory trade-off; K = full tape, like unroll).
    Returns (outer loss, metrics, ∂outer/∂weights, detached θ_K)."""
    lr = float(cfg.inner_lr)
    device = weights.device
    w = weights.detach()
    pre_loc = _pre_loc_logits(base_model, params, loc_batch, cfg)
    steps = list(_schedule(batch, cfg))
    keep_from = len(steps) - max(0, int(_cfg(cfg, "adjoint_keep_last", 1)))
    thetas: list[Params] = []
    states = []
    kept: dict[int, tuple[Params, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
    theta = {n: p.detach() for n, p in params.items()}
    _set_inner_mode(base_model, cfg)
    for k, (rows, length) in enumerate(steps):  # forward: remember θ_{k-1} and the RNG state
        thetas.append(theta)
        states.append(_rng_state(device))
        leaves = detach_params(theta)
        if k >= keep_from:
            wk = _cut(w, rows, length).requires_grad_()
            grads = _grads(step_loss(base_model, leaves, batch, wk, rows, length, cfg), leaves, True)
            kept[k] = (leaves, wk, grads)
        else:
            grads = _grads(step_loss(base_model, leaves, batch, w, rows, length, cfg), leaves, False)
        theta = {n: (p - lr * g).detach() for (n, p), g in zip(theta.items(), grads, strict=True)}
    final = detach_params(theta)
    total, metrics = outer_loss(base_model, final, batch, loc_batch, pre_loc, cfg)
    lam = list(_grads(total, final, False))
    after = _rng_state(device)
    dw = torch.zeros_like(w)
    _set_inner_mode(base_model, cfg)
    for k in range(len(steps) - 1, -1, -1):  # backward: λ_{k-1} = λ_k − α H_k λ_k, ∂L/∂w_k = −α ∂s_k/∂w_k
        rows, length = steps[k]
        if k in kept:
            leaves, wk, g = kept.pop(k)
        else:
            _set_rng(states[k], device)
            leaves = detach_params(thetas[k])
            wk = _cut(w, rows, length).requires_grad_()
            g = _grads(step_loss(base_model, leaves, batch, wk, rows, length, cfg), leaves, True)
        s = sum((gi * li).sum() for gi, li in zip(g, lam, strict=True))
        gw, *gth = torch.autograd.grad(s, [wk, *leaves.values()], allow_unused=True, materialize_grads=True)
        n = min(length, dw.shape[1])
        dw[rows, :n] -= lr * gw[:, :n]
        lam = [li - lr * gi for li, gi in zip(lam, gth, strict=True)]
        thetas[k] = {}
        del g, s, gw, gth, leaves, wk
    _set_rng(after, device)
    return total.detach(), metrics, dw, {n: p.detach() for n, p in theta.items()}


def meta_grad_wrt_weights(
    base_model: torch.nn.Module,
    params: Params,
    batch: dict[str, torch.Tensor],
    weights: torch.Tensor,
    cfg: Any,
    loc_batch: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """∂(L_qa + c_kl·L_loc)/∂weights through the inner loop, computed with `cfg.meta_grad_mode`."""
    mode = _cfg(cfg, "meta_grad_mode", "unroll")
    if mode == "adjoint":
        return _adjoint(base_model, params, batch, weights, loc_batch, cfg)[2]
    if mode != "unroll":
        raise ValueError(f"meta_grad_mode must be one of {', '.join(META_GRAD_MODES)}, got {mode!r}")
    w = weights.detach().requires_grad_()
    pre_loc = _pre_loc_logits(base_model, params, loc_batch, cfg)
    new = inner_update(base_model, params, batch, w, cfg, create_graph=True)
    total, _ = outer_loss(base_model, new, batch, loc_batch, pre_loc, cfg)
    (grad,) = torch.autograd.grad(total, [w], allow_unused=True, materialize_grads=True)
    return grad


def _weight_metrics(weights: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    w = weights.detach() * mask
    return {
        "weights_mean": float(w.sum() / mask.sum().clamp_min(1)),
        "L2-norm": float(w.norm()),
        "L2-norm_from_one": float(((w - 1.0) * mask).norm()),
        "weights_max": float(w.max()),
    }


def meta_step(
    weight_model: torch.nn.Module,
    base_model: torch.nn.Module,
    params: Params,
    batch: dict[str, torch.Tensor],
    loc_batch: dict[str, torch.Tensor] | None,
    cfg: Any,
) -> tuple[torch.Tensor, dict[str, float], Params]:
    """One meta-step: weights → inner update → outer loss → backward of total/grad_acc_steps into the weighting
    model's .grad (accumulates; the caller steps and zeroes). The base model's own parameters and the detached
    θ₀ leaves receive no .grad. Returns (total loss, metrics, detached θ_K)."""
    mode = _cfg(cfg, "meta_grad_mode", "unroll")
    scale = 1.0 / int(_cfg(cfg, "grad_acc_steps", 1))
    inputs = [p for p in weight_model.parameters() if p.requires_grad]
    if mode == "adjoint":
        # the weighting model's activations are not held through the inner loop (at DistilGPT-2 x 6 x 1024
        # they outweigh one inner step's graph): its forward runs again, with the same dropout masks, for the
        # surrogate backward at the end
        weights = checkpoint(weight_model, batch["doc_ids"], batch["doc_mask"], use_reentrant=False)
    else:
        weights = weight_model(batch["doc_ids"], batch["doc_mask"])
    c_norm = float(_cfg(cfg, "c_norm", 0.0))
    penalty = norm_penalty(weights, batch["doc_mask"]) if c_norm else None
    metrics: dict[str, float] = {}
    if _cfg(cfg, "log_metrics", "cheap") == "full":
        metrics.update(_full_metrics_before(base_model, params, batch, cfg))
    if mode == "adjoint":
        total, m, dw, new = _adjoint(base_model, params, batch, weights, loc_batch, cfg)
        surrogate = (weights * dw).sum()
        if penalty is not None:
            surrogate = surrogate + c_norm * penalty
            total = total + c_norm * penalty.detach()
        if inputs:
            torch.autograd.backward(surrogate * scale, inputs=inputs)
    elif mode == "unroll":
        pre_loc = _pre_loc_logits(base_model, params, loc_batch, cfg)
        new_graph = inner_update(base_model, params, batch, weights, cfg, create_graph=True)
        total, m = outer_loss(base_model, new_graph, batch, loc_batch, pre_loc, cfg)
        if penalty is not None:
            total = total + c_norm * penalty
        if inputs and total.requires_grad:
            torch.autograd.backward(total * scale, inputs=inputs)
        total = total.detach()
        new = {n: p.detach() for n, p in new_graph.items()}
        del new_graph
    else:
        raise ValueError(f"meta_grad_mode must be one of {', '.join(META_GRAD_MODES)}, got {mode!r}")
    metrics.update(m)
    metrics.update(_weight_metrics(weights, batch["doc_mask"]))
    metrics["total_loss"] = float(total)
    if _cfg(cfg, "log_metrics", "cheap") == "full":
        after = _full_metrics_before(base_model, detach_params(new), batch, cfg)
        metrics["qa_gain"] = metrics.pop("qa_loss_before") - after["qa_loss_before"]
        metrics["text_gain"] = metrics["text_loss"] - after["text_loss"]
    return total, metrics, detach_params(new)


def _full_metrics_before(
    base_model: torch.nn.Module, params: Params, batch: dict[str, torch.Tensor], cfg: Any
) -> dict[str, float]:
    """Metric-only forwards (the reference always runs them; here only with log_metrics=full)."""
    base_model.eval()
    with torch.no_grad():
        qa = answer_nll(
            model_logits(base_model, params, batch["qa_ids"], batch["qa_mask"]), batch["qa_labels"]
        )
        ids, mask = batch["doc_ids"], batch["doc_mask"]
        text = answer_nll(model_logits(base_model, params, ids, mask), ids.masked_fill(mask == 0, -100))
    return {"qa_loss_before": float(qa), "text_loss": float(text)}


def evaluate_batch(
    weight_model: torch.nn.Module,
    base_model: torch.nn.Module,
    params: Params,
    batch: dict[str, torch.Tensor],
    loc_batch: dict[str, torch.Tensor] | None,
    cfg: Any,
) -> tuple[float, dict[str, float], Params]:
    """Validation meta-step: weights without grad, first-order inner update (no tape), outer loss."""
    with torch.no_grad():
        weights = weight_model(batch["doc_ids"], batch["doc_mask"])
    pre_loc = _pre_loc_logits(base_model, params, loc_batch, cfg)
    new = inner_update(base_model, params, batch, weights, cfg, create_graph=False)
    with torch.no_grad():
        total, metrics = outer_loss(base_model, new, batch, loc_batch, pre_loc, cfg)
    metrics["total_loss"] = float(total)
    metrics.update(_weight_metrics(weights, batch["doc_mask"]))
    return float(total), metrics, detach_params(new)


class MetaTrainer:
    """The meta-training loop of the spec §3 without a framework (the Lightning module drives it).

    Holds θ₀ (the base model's own parameters), the current base parameters (carried across batches inside a
    reset block of reset_base_freq / update_batch_size batches), and the accumulation counter. `params` is the
    current base state after each batch."""

    def __init__(
        self,
        weight_model: torch.nn.Module,
        base_model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        cfg: Any,
        update_batch_size: int,
        reset_base_freq: int,
        learned_layers: int = -1,
    ):
        self.weight_model, self.base_model, self.optimizer, self.cfg = (
            weight_model,
            base_model,
            optimizer,
            cfg,
        )
        self.block = reset_block(reset_base_freq, update_batch_size)
        self.learned_layers = learned_layers
        base_model.requires_grad_(False)
        self.params = base_params(base_model, learned_layers)
        self.batches_seen = 0
        self.grad_clip = float(_cfg(cfg, "grad_clip_thresh", 1e9))

    def theta0(self) -> Params:
        return base_params(self.base_model, self.learned_layers)

    def advance(self, new_params: Params) -> None:
        self.batches_seen += 1
        if self.block <= 1 or self.batches_seen % self.block == 0:
            self.params = self.theta0()
        else:
            self.params = new_params

    def train_batch(
        self,
        batch: dict[str, torch.Tensor],
        loc_batch: dict[str, torch.Tensor] | None,
        check: Callable[[dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """One meta-step; the weighting model steps every grad_acc_steps batches. `check(metrics)` runs
        before the carried base parameters or the weighting model change (e.g. to stop on a non-finite loss)."""
        self.weight_model.train()
        _, metrics, new = meta_step(
            self.weight_model, self.base_model, self.params, batch, loc_batch, self.cfg
        )
        if check is not None:
            check(metrics)
        self.advance(new)
        if self.batches_seen % int(_cfg(self.cfg, "grad_acc_steps", 1)) == 0:
            metrics.update(self.optimizer_step())
        return metrics

    def optimizer_step(self) -> dict[str, float]:
        params = [p for p in self.weight_model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": float(norm)}

    def validate(
        self, batches: list[dict[str, torch.Tensor]], loc_batches: list[dict[str, torch.Tensor] | None]
    ) -> dict[str, float]:
        """Mean validation metrics over `batches` with the same reset schedule starting from θ₀; the training
        state (current parameters, counters, train mode) is restored afterwards."""
        saved = self.params
        self.weight_model.eval()
        params = self.theta0()
        sums: dict[str, float] = {}
        for i, (batch, loc) in enumerate(zip(batches, loc_batches, strict=True)):
            _, m, new = evaluate_batch(self.weight_model, self.base_model, params, batch, loc, self.cfg)
            params = self.theta0() if self.block <= 1 or (i + 1) % self.block == 0 else new
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        self.params = saved
        self.weight_model.train()
        return {f"val/{k}": v / max(1, len(batches)) for k, v in sums.items()}


def reset_block(reset_base_freq: int, update_batch_size: int) -> int:
    """Batches per base-reset block; reset_base_freq must be a multiple of update_batch_size (≤1: always reset)."""
    if reset_base_freq <= 1:
        return 1
    if reset_base_freq % update_batch_size:
        raise LmlabError(
            f"reset_base_freq={reset_base_freq} must be a multiple of update_batch_size={update_batch_size}"
        )
    return reset_base_freq // update_batch_size
