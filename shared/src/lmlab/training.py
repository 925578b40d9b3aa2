"""Lightning wiring shared by the five trainers: the common options, the Trainer, resume, and a sampler that
lets a run resume at exactly the next sample.

Exact resume recipe (what every package's LightningModule does):

    class Module(pl.LightningModule):
        def training_step(self, batch, i):
            self.samples_seen += batch["input_ids"].shape[0]     # this rank's samples
            ...
        def on_save_checkpoint(self, ckpt): ckpt["samples_seen"] = self.samples_seen
        def on_load_checkpoint(self, ckpt): self.samples_seen = ckpt["samples_seen"]
        def train_dataloader(self):                               # called after the checkpoint is restored
            sampler = StepSampler(len(ds), seed=cfg.seed, start=self.samples_seen)
            return DataLoader(ds, batch_size=b, sampler=sampler, collate_fn=...)

with `build_trainer(..., use_distributed_sampler=False)` (StepSampler shards by rank itself) and
`trainer.fit(module, ckpt_path=resume_checkpoint(opts, output_dir), weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lmlab.config import option
from lmlab.errors import LmlabError

# torch and Lightning are imported inside the functions: packages build their CLI dataclasses on
# TrainerOptions, and `--help` must not pay for importing them.

LOGGERS = ("csv", "tensorboard", "wandb", "none")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp", "deepspeed")


@dataclasses.dataclass
class TrainerOptions:
    """Options every training subcommand shares. Inherit them in a subcommand's config dataclass."""

    output_dir: str = option("where checkpoints, logs and results go", "runs/run")
    device: str = option("auto | cpu | cuda | mps", "auto")
    devices: int | str = option("devices per node (int, list or auto)", "auto")
    num_nodes: int = option("number of nodes", 1, ge=1)
    strategy: str = option("auto | ddp | ddp_spawn | fsdp | deepspeed", "auto")
    precision: str = option(
        "auto (bf16-mixed on a bf16 GPU, else 32-true) | 32-true | bf16-mixed | 16-mixed", "auto"
    )
    attn_implementation: str = option(
        "sdpa | eager | flash_attention_2 (GPU) | xformers (where supported): the attention of the models",
        "sdpa",
    )
    compile: bool = option(
        "torch.compile the models' forward (in place: checkpoints keep their keys); off by default", False
    )
    max_steps: int = option("optimizer steps to train for", 1000, ge=1)
    accumulate_grad_batches: int = option("micro-batches per optimizer step", 1, ge=1)
    log_every_n_steps: int = option("log metrics every N steps", 10, ge=1)
    val_check_interval: int | None = option("validate every N batches (None: never)", None, ge=1)
    checkpoint_every_n_steps: int = option("save a resumable checkpoint every N steps", 500, ge=1)
    logger: str = option("csv | tensorboard | wandb | none (metrics.jsonl is always written)", "csv")
    progress_bar: bool = option("show a progress bar", True)
    seed: int = option("random seed", 42)
    overwrite: bool = option("run again into an --output_dir that holds a finished run (DONE)", False)
    resume: str = option("auto (from <output_dir>/checkpoints/last.ckpt if there) | never | PATH", "auto")

    def __post_init__(self) -> None:
        from lmlab.config import check_bounds

        check_bounds(self)
        if self.logger not in LOGGERS:
            raise ValueError(f"--logger must be one of {', '.join(LOGGERS)}, got {self.logger!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")


def _loggers(opts: TrainerOptions, output_dir: Path) -> list[Any]:
    import pytorch_lightning as pl

    from lmlab.logging import JsonlLogger

    optional = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
    if opts.logger in optional:
        import importlib.util

        module, extra = optional[opts.logger]
        if importlib.util.find_spec(module) is None:
            raise LmlabError(
                f"--logger {opts.logger} needs the {module} package: pip install 'lmlab[{extra}]'"
            )
    loggers: list[Any] = [JsonlLogger(output_dir)]
    if opts.logger == "csv":
        loggers.append(pl.loggers.CSVLogger(output_dir, name="logs"))
    elif opts.logger == "tensorboard":
        loggers.append(pl.loggers.TensorBoardLogger(output_dir, name="logs"))
    elif opts.logger == "wandb":
        loggers.append(pl.loggers.WandbLogger(save_dir=output_dir, name=output_dir.name))
    return loggers


def build_trainer(
    opts: TrainerOptions,
    output_dir: str | os.PathLike | None = None,
    callbacks: Sequence[Any] = (),
    **trainer_kwargs: Any,
) -> Any:
    """A Lightning Trainer configured from `opts`: accelerator, devices, nodes, strategy, precision, step
    budget, accumulation, loggers (metrics.jsonl always), a progress bar, and a resumable checkpoint
    (`<output_dir>/checkpoints/last.ckpt`) every `checkpoint_every_n_steps` steps and at the last step.
    `TrainMode` trains every module in train mode except the module's declared `eval_modules`;
    `ExactResume` keys every micro-batch's randomness on its number (bit-exact resume with dropout on, each
    step once in metrics.jsonl); `FiniteGuard` stops on a non-finite loss or gradient before it is saved.

    `trainer_kwargs` override any Trainer argument (e.g. `accumulate_grad_batches=1` for manual optimisation,
    `use_distributed_sampler=False` with `StepSampler`).
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar

    from lmlab.callbacks import ExactResume, FinalMetricsRow, FiniteGuard, LastStepCheckpoint, TrainMode
    from lmlab.device import resolve_accelerator, resolve_precision

    output_dir = Path(output_dir if output_dir is not None else opts.output_dir)
    quiet_lightning()
    accelerator = resolve_accelerator(opts.device)
    if opts.strategy == "fsdp" and accelerator == "cpu":
        raise LmlabError("--strategy fsdp needs GPUs; use --strategy ddp on the CPU")
    checkpoint = LastStepCheckpoint(
        dirpath=output_dir / "checkpoints",
        every_n_train_steps=opts.checkpoint_every_n_steps,
        save_last=True,
        save_top_k=0,  # one file: last.ckpt, rewritten at each save (no identical step-N.ckpt beside it)
        save_on_train_epoch_end=True,
    )
    all_callbacks = [
        TrainMode(),
        ExactResume(opts.seed),
        FiniteGuard(output_dir / "checkpoints"),
        FinalMetricsRow(),
        checkpoint,
        *callbacks,
    ]
    if opts.progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=max(1, opts.log_every_n_steps // 2)))
    kwargs: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": opts.devices,
        "num_nodes": opts.num_nodes,
        "strategy": opts.strategy,
        "precision": resolve_precision(opts.precision, accelerator),
        "max_steps": opts.max_steps,
        "max_epochs": -1,
        "accumulate_grad_batches": opts.accumulate_grad_batches,
        "log_every_n_steps": opts.log_every_n_steps,
        "val_check_interval": opts.val_check_interval,
        "check_val_every_n_epoch": None if opts.val_check_interval is not None else 1,
        "logger": _loggers(opts, output_dir),
        "callbacks": all_callbacks,
        "enable_progress_bar": opts.progress_bar,
        "enable_model_summary": False,
        "default_root_dir": output_dir,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(trainer_kwargs)
    return pl.Trainer(**kwargs)


def _no_tip(record: Any) -> bool:
    return not str(record.getMessage()).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Silence two messages that say nothing about the run: Lightning's advertisement for its cloud logger, and
    the deprecation of `LeafSpec` that Lightning's own pytree helper triggers on every step in torch >= 2.10.
    Lightning's warning about modules in eval mode at the start of training is silenced too: `TrainMode` sets
    every mode explicitly, and the ones left in eval are declared. Real warnings stay."""
    import logging
    import warnings

    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _no_tip not in rank_zero.filters:
        rank_zero.addFilter(_no_tip)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def resume_checkpoint(opts: TrainerOptions, output_dir: str | os.PathLike | None = None) -> str | None:
    """The checkpoint to resume from: `last.ckpt` of the run directory when `resume=auto` and it exists,
    nothing with `resume=never`, else the given path (which must exist). With `--overwrite` the run starts
    afresh: the folder's last.ckpt is not resumed (`lmlab.io.prepare_run_dir` removes it)."""
    folder = Path(output_dir if output_dir is not None else opts.output_dir)
    if opts.resume == "never" or (opts.resume == "auto" and getattr(opts, "overwrite", False)):
        return None
    if opts.resume == "auto":
        last = folder / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(opts.resume).is_file():
        raise LmlabError(f"--resume {opts.resume}: no such checkpoint file")
    return opts.resume


def param_groups(model: Any, weight_decay: float, params: Any = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on the rest, none on biases, other 1-D parameters and every
    parameter of a normalisation module (LayerNorm, RMSNorm, T5LayerNorm: any class whose name has "norm").
    Frozen parameters are left out, tied tensors appear once, empty groups are dropped. `params` restricts the
    groups to those parameters (e.g. a head's), still classified by their place in `model`."""
    keep = None if params is None else {id(p) for p in params}
    decay, skip, seen = [], [], set()
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad or (keep is not None and id(param) not in keep):
                continue
            seen.add(id(param))
            (skip if is_norm or name.endswith("bias") or param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def compile_module(module: Any, enabled: bool = True) -> Any:
    """`module.compile()` (torch.compile in place, so `state_dict` keys and checkpoints stay those of the eager
    module) when `enabled`; the module unchanged otherwise. The backend is inductor unless LMLAB_COMPILE_BACKEND
    names another (the tests use aot_eager: the same graph capture, without minutes of kernel compilation)."""
    if enabled:
        module.compile(backend=os.environ.get("LMLAB_COMPILE_BACKEND", "inductor"))
    return module


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of torch.distributed; (0, 1) when it is not initialised."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StepSampler:
    """An endless, deterministic shuffled stream of dataset indices that can start mid-stream.

    Epoch e is `randperm(n)` seeded with `seed + e`; the epochs are concatenated, and rank r of w takes every
    w-th index of that stream. `start` skips the first `start` indices of this rank's share, so a run resumed
    after consuming `start` samples continues with exactly the sample it would have seen next. Rank and world
    size default to torch.distributed's when it is initialised. Pass it as a DataLoader's `sampler`.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        start: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if n < 1:
            raise LmlabError("cannot sample from an empty data set")
        self.n, self.seed, self.start, self.shuffle = n, seed, start, shuffle
        dist_rank, dist_world_size = rank_and_world_size()
        self.rank = rank if rank is not None else dist_rank
        self.world_size = world_size if world_size is not None else dist_world_size

    def _epoch(self, epoch: int) -> list[int]:
        import torch

        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        global_pos = self.rank + self.start * self.world_size  # position in the concatenated stream
        epoch, offset = divmod(global_pos, self.n)
        order = self._epoch(epoch)
        while True:
            yield order[offset]
            offset += self.world_size
            while offset >= self.n:
                offset -= self.n
                epoch += 1
                order = self._epoch(epoch)
