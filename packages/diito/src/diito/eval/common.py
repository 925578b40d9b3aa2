"""Fine-tuning shared by eval-glue / eval-ner / eval-qa: a small LightningModule around a stock HF head model
(AdamW with lmlab's parameter groups, transformers' linear schedule with optional warm-up), trained by lmlab's
Trainer with a progress bar; evaluation in a plain no-grad loop. A run folder closes like every lmlab run:
`results.json`, `report.md`, then `DONE` (lmlab.io.finish_run).

A fine-tune is resumable like `diito train`: lmlab's `build_trainer` (randomness keyed on the micro-batch, the
non-finite guard, `last.ckpt` every `--checkpoint_every_n_steps`) and an endless `StepSampler` started at the
samples already seen, so a killed fine-tune run again continues bit-exactly. Its checkpoints and metrics.jsonl
live in `<output_dir>/finetune/`; the checkpoints are removed just before the results are written, so a finished
evaluation run again starts afresh (its DONE removed first) instead of resuming a stale state.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


class FinetuneModule(pl.LightningModule):
    def __init__(self, model, features: list[dict], cfg, total_steps: int):
        super().__init__()
        self.model = model
        self.features, self.cfg, self.total = features, cfg, total_steps
        self.samples_seen = 0

    def training_step(self, batch, _):
        loss = self.model(**batch).loss
        size = len(next(iter(batch.values())))
        self.samples_seen += size
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=size)
        return loss

    def configure_optimizers(self):
        from lmlab.training import param_groups
        from transformers import get_scheduler

        opt = torch.optim.AdamW(param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.learning_rate)
        warm = math.ceil(self.cfg.warmup_ratio * self.total)
        sched = get_scheduler("linear", opt, num_warmup_steps=warm, num_training_steps=self.total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):  # called after a checkpoint is restored: starts at the next unseen sample
        from lmlab.training import StepSampler

        sampler = StepSampler(
            len(self.features), seed=self.cfg.seed, start=self.samples_seen, rank=0, world_size=1
        )
        return DataLoader(self.features, batch_size=self.cfg.per_device_train_batch_size, sampler=sampler)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, checkpoint):
        self.samples_seen = int(checkpoint["samples_seen"])


def finetune_dir(cfg) -> Path:
    return Path(cfg.output_dir) / "finetune"


def resume_point(cfg) -> str | None:
    """The checkpoint a fine-tune resumes from (`--resume auto|never|PATH`), checked to load as plain tensors;
    a folder holding a finished run is refused unless --overwrite (lmlab's one meaning of it). Call it before
    writing anything."""
    from lmlab.io import refuse_finished
    from lmlab.training import TrainerOptions, resume_checkpoint

    from diito.trainer import checked_checkpoint

    refuse_finished(cfg.output_dir, cfg.overwrite)
    opts = TrainerOptions(output_dir=str(finetune_dir(cfg)), resume=cfg.resume, overwrite=cfg.overwrite)
    return checked_checkpoint(resume_checkpoint(opts))


def finetune(model, features: list[dict], cfg, ckpt: str | None) -> None:
    """Train `model` on `features` (dicts of tensors, labels included) for cfg.num_train_epochs passes counted
    in samples (batches run on across epoch ends), resuming from `ckpt` (see `resume_point`)."""
    from lmlab.io import prepare_run_dir
    from lmlab.training import TrainerOptions, build_trainer, compile_module

    prepare_run_dir(
        cfg.output_dir, cfg.overwrite, also=[finetune_dir(cfg)]
    )  # --overwrite: the old run's outputs go
    total = max(1, math.ceil(len(features) * cfg.num_train_epochs / cfg.per_device_train_batch_size))
    opts = TrainerOptions(
        output_dir=str(finetune_dir(cfg)),
        device=cfg.device,
        devices=1,
        max_steps=total,
        log_every_n_steps=1,
        checkpoint_every_n_steps=cfg.checkpoint_every_n_steps,
        logger="none",
        progress_bar=cfg.progress_bar,
        seed=cfg.seed,
    )
    metrics = finetune_dir(cfg) / "metrics.jsonl"
    if ckpt is None and metrics.is_file():
        metrics.unlink()  # a fresh fine-tune replaces the log of an earlier, finished one
    compile_module(model, cfg.compile)  # in place: the checkpoints keep the eager model's keys
    trainer = build_trainer(opts, use_distributed_sampler=False)
    trainer.fit(FinetuneModule(model, features, cfg, total), ckpt_path=ckpt, weights_only=True)
    model.eval()


def drop_checkpoints(cfg) -> None:
    """Remove the fine-tune's checkpoints once it is evaluated (they only serve a resume)."""
    shutil.rmtree(finetune_dir(cfg) / "checkpoints", ignore_errors=True)


def finish(cfg, title: str, result: dict, text: str) -> Path:
    """Close the run folder: the fine-tune's checkpoints removed, then results.json, report.md and DONE last
    (lmlab.io.finish_run). Returns the path of results.json."""
    from lmlab.io import finish_run, results_report

    drop_checkpoints(cfg)
    out = finish_run(cfg.output_dir, result, results_report(title, result, text))
    return out / "results.json"


def device_of(model) -> torch.device:
    return next(model.parameters()).device
