"""Fine-tuning shared by eval-glue / eval-ner / eval-qa: a small LightningModule around a stock HF head model
(AdamW, linear decay with optional warm-up), trained by lmlab's Trainer; evaluation in a plain no-grad loop."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from diito.trainer import linear_schedule


class FinetuneModule(pl.LightningModule):
    def __init__(self, model, lr: float, weight_decay: float, warmup_ratio: float, total_steps: int):
        super().__init__()
        self.model = model.train()
        self.lr, self.wd, self.warmup_ratio, self.total = lr, weight_decay, warmup_ratio, total_steps

    def training_step(self, batch, _):
        loss = self.model(**batch).loss
        self.log(
            "train/loss",
            loss.detach(),
            on_step=True,
            prog_bar=True,
            batch_size=len(next(iter(batch.values()))),
        )
        return loss

    def configure_optimizers(self):
        from diito.trainer import param_groups

        opt = torch.optim.AdamW(param_groups(self.model, self.wd), lr=self.lr)
        warm = math.ceil(self.warmup_ratio * self.total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, warm, self.total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def finetune(model, loader, cfg) -> None:
    """Train `model` on `loader` for cfg.num_train_epochs with lmlab's Trainer (no checkpoints kept)."""
    from lmlab.device import resolve_accelerator, resolve_precision
    from lmlab.logging import JsonlLogger
    from lmlab.seed import seed_everything

    seed_everything(cfg.seed)
    total = max(1, math.ceil(len(loader) * cfg.num_train_epochs))
    accelerator = resolve_accelerator(cfg.device)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=resolve_precision("auto", accelerator),
        max_steps=total,
        max_epochs=-1,
        logger=JsonlLogger(cfg.output_dir),
        log_every_n_steps=1,
        enable_checkpointing=False,  # a fine-tuning run is short; its result is the metrics, not the weights
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=cfg.output_dir,
    )
    trainer.fit(
        FinetuneModule(model, cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio, total),
        train_dataloaders=loader,
    )
    model.eval()


def device_of(model) -> torch.device:
    return next(model.parameters()).device
