"""The IRM-games update (paper §3, reference `InvariantTrainer.invariant_train`), shared by the Lightning module
and the plain-PyTorch `InvariantTrainer` API.

One update on environment e: clear every gradient (set_to_none), forward the ensemble on a batch of e, the
ensemble's MLM loss, backward, clip the joint norm of exactly the parameters being stepped (body and head e),
step the body optimizer and head e's optimizer and their schedulers. Heads that are not stepped run with
frozen weights, so they compute no weight gradient (their `.grad` stays None) but still pass gradient to the
body. Fixes to the reference: it clips over all parameters including stale gradients of inactive heads
(their grads were only cleared on their own turn) and it computes weight gradients for every head.

fp16 (a `torch.amp.GradScaler`): the forward runs under float16 autocast, the loss is scaled before backward,
the stepped optimizers are unscaled before clipping, and one `update` of the scale follows. An update whose
gradients overflow steps nothing (no optimizer, no scheduler), so its caller redoes the same update at the
halved scale; one loss scale serves all n + 1 optimizers, so body and head e always step together.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from lmlab.errors import LmlabError
from torch import nn

MODES = ("irm", "ensemble", "erm")
HEAD_LR_SCHEDULES = ("reference", "own")


@dataclass
class OptimSettings:
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    adafactor: bool = False
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0

    @classmethod
    def from_args(cls, args) -> OptimSettings:
        """From a `transformers.TrainingArguments` (or any object with the same attribute names)."""
        kw = {}
        for name in cls.__dataclass_fields__:
            if hasattr(args, name):
                value = getattr(args, name)
                kw[name] = value.value if hasattr(value, "value") else value
        return cls(**kw)


def make_optimizer(
    params: Iterable[nn.Parameter], module: nn.Module, s: OptimSettings
) -> torch.optim.Optimizer:
    """AdamW (or Adafactor) over `params`, grouped by lmlab's `param_groups` (no weight decay on biases, 1-D
    and normalisation parameters, each tied tensor once)."""
    from lmlab.training import param_groups

    groups = param_groups(module, s.weight_decay, params=list(params))
    if s.adafactor:
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=s.learning_rate, scale_parameter=False, relative_step=False)
    return torch.optim.AdamW(
        groups, lr=s.learning_rate, betas=(s.adam_beta1, s.adam_beta2), eps=s.adam_epsilon
    )


def make_scheduler(opt: torch.optim.Optimizer, s: OptimSettings, horizon: int):
    from transformers import get_scheduler

    return get_scheduler(
        s.lr_scheduler_type, opt, num_warmup_steps=s.warmup_steps, num_training_steps=max(1, horizon)
    )


def build_optimizers(
    model, s: OptimSettings, total_updates: int, mode: str = "irm", head_lr_schedule: str = "reference"
):
    """n + 1 optimizers and schedulers: (body_opt, {env: head_opt}, body_sched, {env: head_sched}).

    Every scheduler has horizon U (= total updates); with `head_lr_schedule="own"` in IRM mode a head's horizon
    is its own number of updates U / n, so heads decay to 0 too. The body optimizer holds the body's
    parameters (including a shared decoder); each head optimizer its head's."""
    if mode not in MODES:
        raise LmlabError(f"mode must be one of {MODES}, got {mode!r}")
    if head_lr_schedule not in HEAD_LR_SCHEDULES:
        raise LmlabError(f"head_lr_schedule must be one of {HEAD_LR_SCHEDULES}, got {head_lr_schedule!r}")
    body_opt = make_optimizer(model.body.parameters(), model.body, s)
    head_opts = {e: make_optimizer(h.parameters(), h, s) for e, h in model.heads.items()}
    n = len(model.heads)
    head_horizon = total_updates
    if head_lr_schedule == "own" and mode == "irm":
        head_horizon = math.ceil(total_updates / n)
    body_sched = make_scheduler(body_opt, s, total_updates)
    head_scheds = {e: make_scheduler(o, s, head_horizon) for e, o in head_opts.items()}
    return body_opt, head_opts, body_sched, head_scheds


def stepped_heads(model, env: str, mode: str) -> list[str]:
    """Heads stepped by an update on `env`: head `env` in IRM mode, every head otherwise."""
    if mode == "irm":
        if env not in model.heads:
            raise LmlabError(f"no head for environment {env!r}; the model's heads are {model.env_names}")
        return [env]
    return model.env_names


def environment_update(
    model,
    env: str,
    micro_batches: list[dict[str, torch.Tensor]],
    body_opt,
    head_opts: dict,
    body_sched,
    head_scheds: dict,
    mode: str = "irm",
    max_grad_norm: float = 1.0,
    backward: Callable[[torch.Tensor], None] | None = None,
    step: Callable[[object, bool], None] | None = None,
    sparse: bool = True,
    reduce: Callable[[list, torch.Tensor, int], tuple[torch.Tensor, int]] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    update_number: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> tuple[float, float, int]:
    """One update on `env` (module docstring): `accumulate_micro_batch` on each micro-batch, then
    `finish_update`. Returns (loss, pre-clip grad norm of the stepped parameters, number of masked tokens).
    `backward(loss)` and `step(optimizer, is_body)` let Lightning's manual optimisation plug in; defaults are
    `loss.backward()` and `optimizer.step()`. `reduce(params, loss, n_masked) -> (loss, n_masked)` runs after
    backward and before clipping, on the stepped parameters only (body and the stepped heads): data-parallel
    training averages their gradients across ranks there. With `scaler` (fp16) a non-finite norm means the
    update overflowed and stepped nothing; without it, a non-finite norm is an error. A non-finite loss is always
    an error (`NonFiniteLossError` naming `update_number`, the environment and `checkpoint_dir`, the resume
    point), raised before anything is stepped."""
    loss, n_masked = 0.0, 0
    for j, mb in enumerate(micro_batches):
        micro_loss, micro_masked = accumulate_micro_batch(
            model, env, mb, len(micro_batches), mode, first=j == 0, backward=backward, sparse=sparse,
            scaler=scaler, update_number=update_number, checkpoint_dir=checkpoint_dir,
        )  # fmt: skip
        loss += micro_loss
        n_masked += micro_masked
    return finish_update(
        model, env, loss, n_masked, body_opt, head_opts, body_sched, head_scheds, mode, max_grad_norm, step,
        reduce, scaler, update_number, checkpoint_dir,
    )  # fmt: skip


def accumulate_micro_batch(
    model,
    env: str,
    micro_batch: dict[str, torch.Tensor],
    n_micro_batches: int,
    mode: str = "irm",
    first: bool = True,
    backward: Callable[[torch.Tensor], None] | None = None,
    sparse: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    update_number: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> tuple[float, int]:
    """Forward and backward of one of the `n_micro_batches` micro-batches of an update on `env` (loss divided by
    their number); the `first` clears every gradient (set_to_none) and freezes the heads not stepped. Returns
    (this micro-batch's share of the update loss, its masked tokens)."""
    from lmlab.callbacks import check_finite

    if first:
        model.set_trainable_heads(stepped_heads(model, env, mode))
        for p in model.parameters():
            p.grad = None
    with fp16_autocast(model, scaler):
        out = model(**micro_batch, sparse=sparse)
    loss = out.loss / n_micro_batches
    check_finite(update_number, {f"mlm on environment {env}": loss}, checkpoint_dir)
    (backward or (lambda t: t.backward()))(loss if scaler is None else scaler.scale(loss))
    return float(loss.detach().float().cpu()), int(out.n_masked or 0)


def finish_update(
    model,
    env: str,
    loss: float,
    n_masked: int,
    body_opt,
    head_opts: dict,
    body_sched,
    head_scheds: dict,
    mode: str = "irm",
    max_grad_norm: float = 1.0,
    step: Callable[[object, bool], None] | None = None,
    reduce: Callable[[list, torch.Tensor, int], tuple[torch.Tensor, int]] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    update_number: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> tuple[float, float, int]:
    """After the micro-batches of an update (`accumulate_micro_batch`): all-reduce, unscale (fp16), clip the
    joint norm of the body and the stepped heads, step their optimizers and schedulers (see
    `environment_update`). Returns (loss, pre-clip grad norm, masked tokens)."""
    from lmlab.callbacks import NonFiniteLossError

    active = stepped_heads(model, env, mode)
    total = torch.tensor(loss)
    params = list(model.body.parameters())
    for e in active:
        params += list(model.heads[e].parameters())
    params = list(dict.fromkeys(params))
    if reduce is not None:
        total, n_masked = reduce(params, total, n_masked)
    params = [p for p in params if p.grad is not None]
    if scaler is not None:  # the raw optimizer under Lightning's wrapper: its parameters' grads are unscaled
        for opt in (body_opt, *(head_opts[e] for e in active)):
            scaler.unscale_(getattr(opt, "optimizer", opt))
    if max_grad_norm and max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    if not torch.isfinite(norm):
        if scaler is None:
            raise NonFiniteLossError(
                update_number,
                f"the gradient norm of the body and head(s) {', '.join(active)} on environment {env} is {float(norm)}",
                checkpoint_dir,
            )
        for p in params:
            p.grad = None
        scaler.update()  # overflow: halve the scale, step nothing
        model.set_trainable_heads(model.env_names)
        return float(total), float(norm), n_masked
    do_step = step or (lambda opt, is_body: opt.step())
    do_step(body_opt, True)
    for e in active:
        do_step(head_opts[e], False)
    body_sched.step()
    for e in active:
        head_scheds[e].step()
    if scaler is not None:
        scaler.update()
    model.set_trainable_heads(model.env_names)
    return float(total), float(norm), n_masked


def fp16_autocast(model: nn.Module, scaler: torch.amp.GradScaler | None):
    """float16 autocast on the model's device when training with a loss scaler, else nothing."""
    if scaler is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.float16)


@torch.no_grad()
def evaluate_batches(model, batches: list[dict], per_head: bool = False) -> dict:
    """Token-weighted perplexity exp(sum NLL / #masked) (lmlab.metrics.perplexity), the reference-style exp(mean
    of batch means), and optionally each head's own perplexity."""
    from lmlab.metrics import perplexity

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll = 0.0
    batch_means: list[float] = []
    batch_sizes: list[int] = []
    n_tok = 0
    head_nll = {e: 0.0 for e in model.env_names} if per_head else None
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        out = model(**b, sparse=True, return_head_logits=per_head)
        labels = b["labels"][b["labels"] != -100]
        if labels.numel() == 0:
            continue
        s = torch.nn.functional.cross_entropy(out.logits.float(), labels, reduction="sum").item()
        nll += s
        n_tok += labels.numel()
        batch_means.append(s / labels.numel())
        batch_sizes.append(b["input_ids"].shape[0])
        if per_head:
            for i, e in enumerate(model.env_names):
                head_nll[e] += torch.nn.functional.cross_entropy(
                    out.head_logits[i].float(), labels, reduction="sum"
                ).item()
    model.train(was_training)
    if n_tok == 0:
        raise LmlabError("the evaluation data has no maskable token; give more text")
    loss = nll / n_tok
    batch_avg = sum(m * s for m, s in zip(batch_means, batch_sizes, strict=True)) / sum(batch_sizes)
    res = {
        "eval_loss": loss,
        "perplexity": perplexity(nll, n_tok),
        "perplexity_batch_avg": math.exp(batch_avg),
        "n_masked_tokens": n_tok,
    }
    if per_head:
        res["per_head_perplexity"] = {e: perplexity(v, n_tok) for e, v in head_nll.items()}
    return res


class InvariantTrainer:
    """Plain-PyTorch driver of the IRM-games updates (the stable Python API; the CLI trains on Lightning with
    the same `environment_update`). `args` is a `transformers.TrainingArguments` or any object with its names."""

    def __init__(
        self,
        model,
        args,
        tokenizer=None,
        mode: str = "irm",
        head_lr_schedule: str = "reference",
        total_updates: int | None = None,
        sparse: bool = True,
    ) -> None:
        self.model = model
        self.args = args
        self.tokenizer = tokenizer
        self.mode = mode
        self.settings = OptimSettings.from_args(args)
        self.total_updates = total_updates or max(1, int(getattr(args, "max_steps", 0) or 0))
        self.head_lr_schedule = head_lr_schedule
        self.sparse = sparse
        self.body_opt, self.head_opts, self.body_sched, self.head_scheds = build_optimizers(
            model, self.settings, self.total_updates, mode, head_lr_schedule
        )
        self.updates = 0
        self.env_updates = {e: 0 for e in model.env_names}
        self.log: list[dict] = []
        device = next(model.parameters()).device.type
        self.scaler = torch.amp.GradScaler(device) if getattr(args, "fp16", False) else None

    def update(self, env_name: str, batch: dict | list[dict]) -> float:
        """One environment update on an already-collated batch (or list of micro-batches). Under fp16 an
        update that overflows steps nothing and is not counted: `train` redoes it at the lower loss scale."""
        mbs = batch if isinstance(batch, list) else [batch]
        lr_body = self.body_sched.get_last_lr()[0]
        loss, norm, _ = environment_update(
            self.model, env_name, mbs, self.body_opt, self.head_opts, self.body_sched, self.head_scheds,
            self.mode, self.settings.max_grad_norm, sparse=self.sparse, scaler=self.scaler,
            update_number=self.updates + 1,
        )  # fmt: skip
        if not math.isfinite(norm):
            return loss
        self.updates += 1
        if env_name in self.env_updates:
            self.env_updates[env_name] += 1
        self.log.append(
            {"update": self.updates, "env": env_name, "loss": loss, "lr_body": lr_body, "grad_norm": norm}
        )
        return loss

    def train(
        self, env_datasets: dict, collator=None, batch_size: int | None = None, seed: int | None = None
    ) -> dict:
        """Round-robin over the (tokenised, `input_ids`) environments for `total_updates` updates. Batch, masks
        and dropout of update i depend only on (seed, i) (lmlab's `seed_micro_batch` before each update, as the
        CLI's `ExactResume`), so `train` after `load_checkpoint` continues exactly as an uninterrupted run."""
        from lmlab.callbacks import seed_micro_batch

        from invariant_lm.data import EnvironmentStreams, make_collator

        collator = collator or make_collator(self.tokenizer, getattr(self.args, "mlm_probability", 0.15))
        bs = batch_size or int(getattr(self.args, "per_device_train_batch_size", 8))
        seed = int(getattr(self.args, "seed", 42) if seed is None else seed)
        streams = EnvironmentStreams(env_datasets, collator, bs, seed)
        names = streams.names
        while self.updates < self.total_updates:
            i = self.updates
            e = i % len(names)
            seed_micro_batch(seed, 0, i)
            self.update(names[e], streams.batch(e, i // len(names)))
        return {"updates": self.updates, "env_updates": dict(self.env_updates)}

    def evaluate(self, dataset, mask_seed: int = 1234, batch_size: int = 8, per_head: bool = False) -> dict:
        from invariant_lm.data import eval_batches, make_collator

        collator = make_collator(self.tokenizer, getattr(self.args, "mlm_probability", 0.15))
        return evaluate_batches(self.model, eval_batches(dataset, collator, batch_size, mask_seed), per_head)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "body_opt": self.body_opt.state_dict(),
            "head_opts": {e: o.state_dict() for e, o in self.head_opts.items()},
            "body_sched": self.body_sched.state_dict(),
            "head_scheds": {e: s.state_dict() for e, s in self.head_scheds.items()},
            "updates": self.updates,
            "env_updates": dict(self.env_updates),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.body_opt.load_state_dict(state["body_opt"])
        for e, o in self.head_opts.items():
            o.load_state_dict(state["head_opts"][e])
        self.body_sched.load_state_dict(state["body_sched"])
        for e, s in self.head_scheds.items():
            s.load_state_dict(state["head_scheds"][e])
        self.updates = state["updates"]
        self.env_updates = dict(state["env_updates"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    def save_checkpoint(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "trainer_state.pt")
        return directory

    def load_checkpoint(self, directory: str | Path) -> None:
        """Load `trainer_state.pt` with `torch.load(weights_only=True)`: a file holding anything but tensors and
        plain containers is refused, never unpickled."""
        path = Path(directory) / "trainer_state.pt"
        if not path.is_file():
            raise LmlabError(f"{directory} holds no trainer_state.pt")
        self.load_state_dict(load_weights_only(path))


def load_weights_only(path: str | Path) -> dict:
    """`torch.load(path, weights_only=True)` on the CPU. A file it refuses (a pickle of arbitrary objects, a
    corrupt or foreign file) is one `LmlabError` line naming the file; nothing in it is unpickled."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip archive), EOFError, OSError, ...
        raise LmlabError(
            f"{path} does not load with torch.load(weights_only=True) ({type(err).__name__}: it holds objects "
            "other than tensors and plain containers, or it is corrupt) and was refused unread; give a checkpoint "
            "written by invariant-lm"
        ) from err
    if not isinstance(state, dict):
        raise LmlabError(
            f"{path} holds a {type(state).__name__}, not a checkpoint dict; give one written by invariant-lm"
        )
    return state
