"""Lightning callbacks of `lmlab.training.build_trainer` (kept apart so that importing lmlab.training stays light)."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class LastStepCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that also writes `last.ckpt` when training ends between two periodic saves.

    Lightning's own only does so if it never saved at all, so a run of 8 steps checkpointed every 3 left
    `last.ckpt` at step 6, and resuming (or extending `max_steps`) redid steps 7 and 8.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
