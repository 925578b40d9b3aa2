"""Run a console script with a LightningModule's training batches recorded per rank, for DDP tests.

`run_traced(module, entry, args, trace_dir)` runs ``python -m lmlab.testing.trace_batches MODULE ENTRY ARGS...``
in a subprocess: `MODULE` (``pkg.mod:Class``) gets its ``train_dataloader`` wrapped so that every batch of
indices its batch sampler yields is appended as a JSON line to ``trace_dir/rank<R>.jsonl``, then `ENTRY`
(``pkg.cli:main``) runs with `ARGS`. Lightning's DDP launcher re-runs the same command line for the other
ranks, so every rank is traced.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

TRACE_ENV = "LMLAB_TRACE_DIR"


def _resolve(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


class _TracedBatches:
    def __init__(self, sampler, path: str):
        self.sampler, self.path = sampler, path

    def __iter__(self):
        for batch in self.sampler:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(batch) + "\n")
            yield batch

    def __len__(self):  # a TypeError for an endless sampler, which Lightning reads as "no length"
        return len(self.sampler)


def _patch(cls) -> None:
    import torch

    original = cls.train_dataloader

    def train_dataloader(self):
        loader = original(self)
        path = os.path.join(os.environ[TRACE_ENV], f"rank{self.global_rank}.jsonl")
        traced = _TracedBatches(loader.batch_sampler, path)
        return torch.utils.data.DataLoader(loader.dataset, batch_sampler=traced, collate_fn=loader.collate_fn)

    cls.train_dataloader = train_dataloader


def run_traced(module: str, entry: str, args: list[str], trace_dir: Path, timeout: float = 240) -> dict:
    """Run `entry` with `args` in a subprocess, tracing `module`'s training batches; return {"rank0": [...]}.

    A non-zero exit fails with the end of the subprocess's stderr."""
    trace_dir = Path(trace_dir)
    trace_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1", TRACE_ENV: str(trace_dir)}
    cmd = [sys.executable, "-m", __name__, module, entry, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{entry} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return {
        f.stem: [json.loads(line) for line in f.read_text().splitlines()]
        for f in sorted(trace_dir.glob("rank*.jsonl"))
    }


if __name__ == "__main__":
    _patch(_resolve(sys.argv[1]))
    sys.exit(_resolve(sys.argv[2])(sys.argv[3:]))
