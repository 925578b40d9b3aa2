"""Logging: a console logger, and `JsonlLogger`, a Lightning logger that appends metrics to metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only


def get_logger(name: str) -> logging.Logger:
    """A logger printing `[name] message` to stderr at INFO (configured once per name)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class JsonlLogger(Logger):
    """Appends one JSON object per logging call to `<save_dir>/metrics.jsonl` (`{"step": ..., **metrics}`).

    Appending keeps the history of an interrupted run; a resumed run goes on after the last line.
    Hyperparameters go to `<save_dir>/hparams.json`.
    """

    def __init__(self, save_dir: str | os.PathLike, filename: str = "metrics.jsonl"):
        super().__init__()
        self._save_dir = Path(save_dir)
        self.path = self._save_dir / filename
        self.last_step: int | None = None  # the last step this process wrote

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @property
    @rank_zero_experiment
    def experiment(self) -> Path:
        return self.path

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        self._save_dir.mkdir(parents=True, exist_ok=True)
        (self._save_dir / "hparams.json").write_text(json.dumps(params, indent=2, default=str) + "\n")

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._save_dir.mkdir(parents=True, exist_ok=True)
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if step is not None:
            self.last_step = step if self.last_step is None else max(self.last_step, step)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    @rank_zero_only
    def drop_steps_after(self, step: int) -> None:
        """Remove the rows logged after the checkpoint of global step `step` (Lightning logs the work of step
        `step + 1` under `step`): a run resumed from that checkpoint logs them again."""
        if not self.path.is_file():
            return
        rows = read_jsonl(self.path)
        kept = [row for row in rows if row.get("step") is None or row["step"] < step]
        if len(kept) != len(rows):
            from lmlab.io import atomic_write

            with atomic_write(self.path) as fh:
                fh.writelines(json.dumps(row) + "\n" for row in kept)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file back as a list of dicts."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
