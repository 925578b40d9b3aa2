"""Two-process DDP on CPU (gloo) against one process with the same global batch (issue requirement)."""

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch


def _data(path):
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 8, (64,), generator=g)
    rows = [[10 + (int(s) + t) % 8 for t in range(17)] for s in starts]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": rows})}).save_to_disk(str(path))
    return path


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.slow
def test_ddp_two_processes_matches_one_process_curve(tmp_path):
    data = _data(tmp_path / "d.hf")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    common = [
        "--dataset",
        str(data),
        "--hf_path",
        "tiny-gpt",
        "--max_steps",
        "12",
        "--gpu_bs",
        "4",
        "--global_bs",
        "8",
        "--device",
        "cpu",
        "--warmup_steps",
        "2",
        "--logger",
        "none",
        "--progress_bar",
        "false",
        "--val_every",
        "100",
        "--val_batches",
        "1",
        "--model_max_seq_len",
        "32",
        "--learning_rate",
        "3e-3",
        "--log_every_n_steps",
        "1",
        "--emb_loss_weight",
        "1",
        "--lm_loss_weight",
        "0",
    ]
    script = [sys.executable, "-m", "headless_lm", "gpt"]
    for name, extra in (("one", ["--devices", "1"]), ("two", ["--devices", "2", "--strategy", "ddp"])):
        proc = subprocess.run(
            [*script, *common, *extra, "--output_dir", str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) >= 10 and len(two) >= 10
    state_one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    state_two = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state_one["global_step"] == state_two["global_step"] == 12
    # same shape: both fall by a similar amount from similar starts
    assert abs(one[0] - two[0]) < 0.5
    assert one[-1] < one[0] - 0.3 and two[-1] < two[0] - 0.3
    assert abs(one[-1] - two[-1]) < 0.25 * one[0]
