"""Lightning callbacks of `lmlab.training.build_trainer` (kept apart so that importing lmlab.training stays light).

- `LastStepCheckpoint`: `last.ckpt` also at a last step between two periodic saves.
- `ExactResume`: randomness keyed on the micro-batch, so an interrupted run resumes bit-exactly with dropout on,
  and `metrics.jsonl` keeps each step once.
- `FiniteGuard`: a non-finite loss or gradient stops the run with one line, before it can be checkpointed.
- `FinalMetricsRow`: the last step's metrics reach metrics.jsonl even between logging intervals.
- `TrainMode`: every module in train mode when training starts, except those the LightningModule names as
  meant to stay in eval mode (a frozen teacher or base model).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lmlab.errors import LmlabError
from lmlab.logging import JsonlLogger


class LastStepCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that also writes `last.ckpt` when training ends between two periodic saves, and that
    does not save again at the step it was resumed from.

    Lightning's own only does so if it never saved at all, so a run of 8 steps checkpointed every 3 left
    `last.ckpt` at step 6, and resuming (or extending `max_steps`) redid steps 7 and 8.
    """

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        # Lightning does not restore this counter, so with accumulation a resumed run from step k saved again
        # after the first micro-batch of step k + 1 (global step still k): a mid-step checkpoint that does not
        # resume exactly.
        self._last_global_step_saved = int(checkpoint.get("global_step", 0))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)


def seed_micro_batch(seed: int, rank: int, micro_batch: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) from (seed, rank, micro-batch number)."""
    state = np.random.SeedSequence([seed % 2**63, rank, micro_batch]).generate_state(2, dtype=np.uint32)
    derived = int(state[0]) << 32 | int(state[1])
    random.seed(derived)
    np.random.seed(int(state[0]))
    torch.manual_seed(derived)


class ExactResume(pl.Callback):
    """Makes a resumed run continue exactly as the uninterrupted run would have.

    At the start of every micro-batch the global generators (dropout, anything drawing from torch's, NumPy's or
    Python's default generator) are seeded from (seed, rank, micro-batch number), and the micro-batch number is
    part of the checkpoint. Whatever drew from them between the checkpoint and the next step (building the data
    iterator, validation, the restart itself) therefore cannot change what the next step draws, so no generator
    state needs carrying. Data order comes from `StepSampler`, masking from generators seeded by the step.

    On resume, `metrics.jsonl` rows of steps after the checkpoint (written by the interrupted run and about to be
    replayed) are dropped, so every step appears once.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.micro_batches = 0

    def state_dict(self) -> dict[str, Any]:
        return {"micro_batches": self.micro_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.micro_batches = int(state_dict["micro_batches"])

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        seed_micro_batch(self.seed, trainer.global_rank, self.micro_batches)
        self.micro_batches += 1

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, JsonlLogger):
                    logger.drop_steps_after(int(checkpoint.get("global_step", 0)))


class TrainMode(pl.Callback):
    """Puts the LightningModule in train mode when fitting starts (`from_pretrained` returns models in eval mode
    and Lightning 2 keeps modes as it finds them, so dropout would silently stay off), then puts back in eval
    mode the modules named in the LightningModule's `eval_modules` attribute (dotted attribute paths, also of
    modules kept outside the module tree): the ones meant to stay frozen. Lightning restores these modes itself
    after each validation."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.train()
        for name in getattr(pl_module, "eval_modules", ()):
            eval_module(pl_module, name).eval()


def eval_module(pl_module: Any, name: str) -> torch.nn.Module:
    """The module `name` (dotted attribute path) of `pl_module`, also when it is held outside the module tree
    (e.g. a frozen teacher kept out of the checkpoints)."""
    module = pl_module
    for part in name.split("."):
        module = getattr(module, part)
    return module


class FinalMetricsRow(pl.Callback):
    """Writes the last step's metrics to metrics.jsonl when Lightning's logging interval skipped it, so a run
    shorter than `log_every_n_steps` still has its metrics, and every run ends with its final step."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step - 1  # Lightning logs the work of step k under k - 1
        metrics = {}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val"):
                continue
            value = torch.as_tensor(value)
            if value.numel() == 1:
                metrics[key] = float(value)
        if not metrics or step < 0:
            return
        for logger in trainer.loggers:
            if isinstance(logger, JsonlLogger) and (logger.last_step is None or logger.last_step < step):
                logger.log_metrics(metrics, step=step)


def _first_nonfinite(terms: dict[str, Any]) -> tuple[str, float] | None:
    for name, value in terms.items():
        value = torch.as_tensor(value).detach().float()
        if not torch.isfinite(value).all():
            return name, float(value[~torch.isfinite(value)].flatten()[0])
    return None


def check_finite(step: int, terms: dict[str, Any], checkpoint_dir: Any = None) -> None:
    """Raise `NonFiniteLossError` naming the step and the first non-finite term of `terms` (name -> tensor or
    number). One device sync for all terms; call it where the loss terms are computed."""
    values = [torch.as_tensor(v).detach().float().reshape(-1) for v in terms.values()]
    if not values or bool(torch.isfinite(torch.cat([v.cpu() for v in values])).all()):
        return
    name, value = _first_nonfinite(terms)
    raise NonFiniteLossError(step, f"loss term {name!r} is {value}", checkpoint_dir)


class NonFiniteLossError(LmlabError):
    """Training produced a non-finite loss or gradient; the run stops before anything is checkpointed."""

    def __init__(self, step: int, what: str, checkpoint_dir: Any = None):
        where = f" ({checkpoint_dir}/last.ckpt)" if checkpoint_dir else ""
        super().__init__(
            f"step {step}: {what}; training stopped, the last good checkpoint{where} is the resume point. "
            "Lower --learning_rate, clip gradients or check the data, then run the same command again"
        )


class FiniteGuard(pl.Callback):
    """Stops training with `NonFiniteLossError` on a non-finite loss (before backward) or a non-finite gradient
    (before the optimizer step), so no NaN weights are stepped into, and refuses to save a checkpoint whose
    weights are not finite (an update with finite gradients can still overflow them), so `last.ckpt` stays the
    last good resume point. Packages that know their loss terms also call `check_finite` to name the term."""

    def __init__(self, checkpoint_dir: Any = None):
        self.checkpoint_dir = checkpoint_dir

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        check_finite(trainer.global_step + 1, {"loss": loss}, self.checkpoint_dir)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if str(trainer.precision).startswith("16"):
            return  # the fp16 loss scaler skips overflowing steps itself
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if not bool(torch.isfinite(norm)):
            raise NonFiniteLossError(
                trainer.global_step + 1, f"the gradient norm is {float(norm)}", self.checkpoint_dir
            )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if (
                torch.is_tensor(tensor)
                and tensor.is_floating_point()
                and not bool(torch.isfinite(tensor).all())
            ):
                step = checkpoint.get("global_step", trainer.global_step)
                raise NonFiniteLossError(
                    step, f"weight {name!r} is not finite, so it was not saved", self.checkpoint_dir
                )
