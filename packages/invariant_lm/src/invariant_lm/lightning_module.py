"""Lightning module of the IRM-games training (manual optimisation, n + 1 optimizers and schedulers).

The batch of update i is a pure function of (seed, i): environment i mod n, that environment's stream position
i div n (times the accumulation steps), masks seeded by the update index. The dataloader only ticks, once per
micro-batch: an update is `accumulate` training steps, each the forward and backward of one micro-batch, the last
one also clipping and stepping. `training_step` reads `global_step` (restored from the checkpoint), so a resumed
run continues with exactly the batch and masks it would have seen. Dropout is keyed on the micro-batch by lmlab's
`ExactResume` (added by `build_trainer`: every tick seeds the global generators from (seed, rank, tick number),
and the tick number is in the checkpoint), so it repeats exactly after a resume too. Checkpoints are written only
between updates (never with gradients half accumulated). Only the body optimizer is stepped through Lightning
(so `global_step` counts updates); head optimizers are stepped directly, and all their states and scheduler
states are in the checkpoint. Metrics go to the loggers once per `logging_steps` updates (and at the last),
under step `update - 1` (Lightning's convention, which `ExactResume` trims on resume). fp16 runs Lightning at 32-true and keeps its own loss scaler (in the checkpoint
too): Lightning's fp16 plugin unscales and updates per optimizer step, which the joint clipping of body and
head e cannot use. An overflowing update steps nothing and is redone (all its micro-batches) within its last
training step at the halved scale, so every update is `accumulate` ticks and one metrics row.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from lmlab.callbacks import NonFiniteLossError
from lmlab.errors import LmlabError
from torch.utils.data import DataLoader, IterableDataset

from invariant_lm.data import EnvironmentStreams
from invariant_lm.trainer import OptimSettings, accumulate_micro_batch, build_optimizers, finish_update

# consecutive fp16 overflows of one update (the loss scale halves each time) before it is an error
MAX_OVERFLOWS = 64


class _Ticks(IterableDataset):
    def __iter__(self):
        while True:
            yield 0


class InvariantLightningModule(pl.LightningModule):
    def __init__(
        self,
        model,
        streams: EnvironmentStreams,
        settings: OptimSettings,
        total_updates: int,
        mode: str = "irm",
        head_lr_schedule: str = "reference",
        accumulate: int = 1,
        sparse: bool = True,
        logging_steps: int = 50,
        output_dir: str | Path | None = None,
        heads_saving: int = 0,
        model_saving: int = 0,
        tokenizer=None,
        fp16: bool = False,
        val_sets: dict | None = None,
        val_every: int | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.streams = streams
        self.settings = settings
        self.total_updates = total_updates
        self.mode = mode
        self.head_lr_schedule = head_lr_schedule
        self.accumulate = accumulate
        self.sparse = sparse
        self.logging_steps = logging_steps
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.heads_saving = heads_saving
        self.model_saving = model_saving
        self.tokenizer = tokenizer
        self.env_loss_sum = {e: 0.0 for e in streams.names}
        self.env_updates = {e: 0 for e in streams.names}
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.fp16 = fp16
        self.scaler: torch.amp.GradScaler | None = None
        self.val_sets = val_sets or {}
        self.val_every = val_every
        self._micro: list[
            tuple[float, int, int]
        ] = []  # (loss share, masked, tokens) of this update's micro-batches
        self._update_seconds = 0.0

    # -------------------------------------------------------------- Lightning hooks
    def configure_optimizers(self):
        body, heads, body_s, head_s = build_optimizers(
            self.model, self.settings, self.total_updates, self.mode, self.head_lr_schedule
        )
        self._head_names = list(heads)
        return [body, *heads.values()], [body_s, *head_s.values()]

    def setup(self, stage: str) -> None:
        world = int(self.trainer.world_size)
        if world != self.streams.world_size:
            raise LmlabError(
                f"the data streams were built for {self.streams.world_size} process(es) but the trainer runs "
                f"{world}; build EnvironmentStreams with world_size={world}"
            )
        self.streams.rank = int(self.global_rank)
        if self.fp16:
            self.scaler = torch.amp.GradScaler(self.trainer.strategy.root_device.type)

    def on_train_start(self) -> None:
        self._micro = []  # (lmlab's LastStepCheckpoint does not save mid-update after a resume)

    def train_dataloader(self):
        return DataLoader(_Ticks(), batch_size=None)

    def _move(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def training_step(self, _tick, _idx):
        t0 = time.perf_counter()
        i = int(self.global_step)
        names = self.streams.names
        e_idx = i % len(names)
        env = names[e_idx]
        k = i // len(names)
        j = len(self._micro)  # this micro-batch's place in update i + 1
        ckpt_dir = self.output_dir / "checkpoints" if self.output_dir is not None else None
        update = i + 1

        def micro_batch(m: int) -> tuple[float, int, int]:
            mb = self._move(self.streams.batch(e_idx, k * self.accumulate + m))
            loss, n_masked = accumulate_micro_batch(
                self.model, env, mb, self.accumulate, self.mode, first=m == 0, backward=self.manual_backward,
                sparse=self.sparse, scaler=self.scaler, update_number=update, checkpoint_dir=ckpt_dir,
            )  # fmt: skip
            return loss, n_masked, int(mb["attention_mask"].sum())

        self._micro.append(micro_batch(j))
        if len(self._micro) < self.accumulate:
            self._update_seconds += time.perf_counter() - t0
            return
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        scheds = self.lr_schedulers()
        scheds = scheds if isinstance(scheds, list) else [scheds]
        head_opts = dict(zip(self._head_names, opts[1:], strict=True))
        head_scheds = dict(zip(self._head_names, scheds[1:], strict=True))
        lr_body = scheds[0].get_last_lr()[0]
        lr_head = (
            head_scheds[env].get_last_lr()[0]
            if env in head_scheds
            else head_scheds[self._head_names[0]].get_last_lr()[0]
        )

        def step(opt, is_body: bool) -> None:
            if is_body:
                opt.step()  # LightningOptimizer: global_step counts updates
            else:
                opt.optimizer.step()

        world = self.streams.world_size
        for attempt in range(
            MAX_OVERFLOWS + 1
        ):  # fp16: an overflowing update steps nothing and is redone here
            if attempt:
                self._micro = [micro_batch(m) for m in range(self.accumulate)]
            reduce = None
            tokens = sum(t for _, _, t in self._micro)
            if world > 1:
                # average the body and head e gradients across ranks before clipping (invariant_lm.distributed)
                from invariant_lm.distributed import GradientAllReduce

                reduce = GradientAllReduce(self.device, tokens)
            loss, norm, n_masked = finish_update(
                self.model, env, sum(x for x, _, _ in self._micro), sum(n for _, n, _ in self._micro), opts[0],
                head_opts, scheds[0], head_scheds, self.mode, self.settings.max_grad_norm, step=step,
                reduce=reduce, scaler=self.scaler, update_number=update, checkpoint_dir=ckpt_dir,
            )  # fmt: skip
            if math.isfinite(norm):
                break
        else:
            raise NonFiniteLossError(
                update,
                f"the fp16 gradients overflowed {MAX_OVERFLOWS + 1} times, down to loss scale "
                f"{self.scaler.get_scale():g}",
                ckpt_dir,
            )
        self._micro = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = self._update_seconds + time.perf_counter() - t0
        self._update_seconds = 0.0
        if reduce is not None:
            tokens = reduce.tokens  # all ranks' tokens: tokens/s is the global throughput
        self.tokens_seen += tokens
        self.train_seconds += dt
        self.env_loss_sum[env] += loss
        self.env_updates[env] += 1
        metrics = {
            "loss": loss,
            "grad_norm": norm,
            "lr_body": lr_body,
            "lr_head": lr_head,
            "n_masked": n_masked,
        }
        if self.scaler is not None:
            metrics["loss_scale"] = self.scaler.get_scale()
        if self.val_every and update % self.val_every == 0 and self.val_sets:
            from invariant_lm.commands import evaluate_sets

            for name, res in evaluate_sets(self.model, self.val_sets).items():
                key = "eval_perplexity" if len(self.val_sets) == 1 else f"eval_perplexity/{Path(name).stem}"
                metrics[key] = res["perplexity"]
        self.log_dict(metrics, prog_bar=True, on_step=True, logger=False)  # the progress bar
        if update % self.logging_steps == 0 or update == self.total_updates:
            for logger in self.loggers:  # one row per logged update, under Lightning's step of the update
                logger.log_metrics(metrics, step=i)
        if self.global_rank == 0 and self.output_dir is not None:
            if update % self.logging_steps == 0 or update == self.total_updates:
                row = {"update": update, "env": env, **metrics, "tokens_per_s": tokens / max(dt, 1e-9)}
                with open(self.output_dir / "train_log.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
            if self.heads_saving and update % self.heads_saving == 0:
                from safetensors.torch import save_file

                folder = self.output_dir / "lm_heads"
                folder.mkdir(exist_ok=True)
                for name, head in self.model.heads.items():
                    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
                    save_file(state, str(folder / f"{name}-{update}.safetensors"))
            if self.model_saving and update % self.model_saving == 0:
                self.model.save_pretrained(self.output_dir / f"model-{update}", self.mode, self.tokenizer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["invariant"] = {
            "invariant_config": self.model.invariant_config(self.mode),
            "base_config": self.model.config.to_dict(),
            "env_loss_sum": dict(self.env_loss_sum),
            "env_updates": dict(self.env_updates),
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "total_updates": self.total_updates,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "accumulate": self.accumulate,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        inv = check_resumable(
            checkpoint, "the checkpoint", self.model.env_names, self.total_updates, self.accumulate
        )
        self.env_loss_sum = dict(inv["env_loss_sum"])
        self.env_updates = dict(inv["env_updates"])
        self.tokens_seen = inv["tokens_seen"]
        self.train_seconds = inv["train_seconds"]
        if self.scaler is not None and inv.get("grad_scaler"):
            self.scaler.load_state_dict(inv["grad_scaler"])

    def train_results(self) -> dict:
        return {
            "updates": int(self.global_step),
            "env_updates": dict(self.env_updates),
            "env_mean_loss": {
                e: self.env_loss_sum[e] / max(1, self.env_updates[e]) for e in self.env_updates
            },
            "train_seconds": self.train_seconds,
            "tokens_per_s": self.tokens_seen / max(self.train_seconds, 1e-9),
            "mode": self.mode,
        }


def check_resumable(
    checkpoint: dict, where, env_names: list[str], total_updates: int, accumulate: int = 1
) -> dict:
    """The checkpoint's `invariant` state, after checking that a run with these heads and this number of updates
    can resume from it (one-line `LmlabError` naming `where` otherwise)."""
    inv = checkpoint.get("invariant")
    if not isinstance(inv, dict) or "global_step" not in checkpoint:
        raise LmlabError(
            f"{where} was not written by invariant-lm train; pass --resume never or another --output_dir"
        )
    saved = inv["invariant_config"]["envs"]
    if saved != env_names:
        raise LmlabError(
            f"{where} has {len(saved)} head(s) {saved} but this run has {len(env_names)} {env_names}; "
            "use the same environments or another --output_dir"
        )
    if inv["total_updates"] != total_updates:
        raise LmlabError(
            f"{where} was trained for {inv['total_updates']} updates, this run asks {total_updates}; "
            "keep --nb_steps or use another --output_dir"
        )
    if inv.get("accumulate", 1) != accumulate:
        raise LmlabError(
            f"{where} was trained with --accumulate_grad_batches {inv.get('accumulate', 1)}, this run asks "
            f"{accumulate}; keep it or use another --output_dir"
        )
    return inv
