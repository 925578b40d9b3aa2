"""`mode-connectivity train` (T5 path) with two CPU processes (DDP, gloo) against one process with the same
global batch: the ranks read disjoint halves of each global batch, the loss curves match closely, and the
run resumes from its Lightning checkpoint."""

import itertools
import json
import shutil

import pytest
import torch
from lmlab.testing.trace_batches import run_traced
from lmlab.training import StepSampler
from mode_connectivity.make_tiny import build_t5, build_tokenizer, synthetic_tasks


def _split(batch):
    """A traced batch holds (position in the global sample stream, example index) pairs."""
    return [p for p, _ in batch], [i for _, i in batch]


def _losses(job):
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_and_resumes(tmp_path):
    tok = build_tokenizer(tmp_path / "model")
    build_t5(tmp_path / "model", tok, d_model=32, num_layers=1, num_heads=2, d_ff=32, seed=0, dropout=0.0)
    task = synthetic_tasks(tmp_path / "data", n_train=48, n_eval=6, seed=0)["tiny-nli"]

    def run(name, steps, *extra, trace_name=None):
        args = [
            "train", "--task_dir", str(task), "--model", str(tmp_path / "model"), "--tune_method", "model",
            "--learning_rate_list", "3e-3", "--bsz_list", "8", "--train_iters", str(steps),
            "--lr_decay_style", "constant", "--output_interval", "1000", "--eval_mode", "rank",
            "--max_input_length", "48", "--max_output_length", "8", "--predict_batch_size", "16",
            "--output_dir", str(tmp_path / name), "--progress_bar", "false", "--logger", "none",
            "--log_every_n_steps", "1", "--checkpoint_every_n_steps", "2", "--seed", "20", "--device", "cpu",
            "--train_epochs", "10", *extra,
        ]  # fmt: skip
        trace = tmp_path / f"trace_{trace_name or name}"
        traces = run_traced("mode_connectivity.train:T5TaskModule", "mode_connectivity.cli:main", args, trace)
        return tmp_path / name, traces

    one, t1 = run("one", 8, "--devices", "1")
    two, t2 = run("two", 8, "--devices", "2", "--strategy", "ddp")
    # rank 0 and rank 1 each read 4 of every global batch of 8, disjoint, and together the one-process batch
    assert set(t2) == {"rank0", "rank1"}
    for step in range(8):
        (pa, a), (pb, b) = _split(t2["rank0"][step]), _split(t2["rank1"][step])
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        p1, i1 = _split(t1["rank0"][step])
        assert sorted(a + b) == sorted(i1)
        # and the same stream positions (so the same answer picks) as in the one-process run
        assert sorted(pa + pb) == sorted(p1) == list(range(8 * step, 8 * step + 8))
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 8
    assert abs(l1[0] - l2[0]) < 0.1 * l1[0]  # the per-rank token means differ from the global one, slightly
    assert l1[-1] < l1[0] and l2[-1] < l2[0]
    assert abs(l1[-1] - l2[-1]) < 0.15 * l1[0]
    s1 = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    s2 = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)
    assert s1["global_step"] == s2["global_step"] == 8
    assert s1["samples_seen"] == 64 and s2["samples_seen"] == 32  # per rank
    # dropout is off; per-rank token means differ slightly from the global one (measured: <= 0.9% per tensor)
    for key, w in s1["state_dict"].items():
        assert (s2["state_dict"][key] - w).float().norm() <= 0.03 * w.float().norm() + 1e-6, key
    assert (one / "model").is_dir() and (two / "model").is_dir()
    assert (two / "results.json").is_file() and (two / "DONE").is_file()
    # resume the two-process run to 10 steps: it continues at exactly the next global batch of the stream
    (two / "DONE").unlink()
    shutil.rmtree(two / "model")
    again, t3 = run("two", 10, "--devices", "2", "--strategy", "ddp", trace_name="resumed")
    s3 = torch.load(again / "checkpoints" / "last.ckpt", weights_only=True)
    assert s3["global_step"] == 10 and s3["samples_seen"] == 40
    stream = list(itertools.islice(iter(StepSampler(48, seed=20, rank=0, world_size=1)), 80))
    assert sorted(_split(t3["rank0"][0])[1] + _split(t3["rank1"][0])[1]) == sorted(stream[64:72])
    assert len(_losses(again)) == 8 + 2
