"""`diito train` with two CPU processes (DDP, gloo) against one process with the same global batch.

One process with `--batch_size 4 --gradient_accumulation_steps 2` reads batches 0, 1 | 2, 3 | ... of the batch
stream; two processes with `--batch_size 4` read batches 0 | 1, 2 | 3, ... (rank r takes every 2nd). The
collator seeds masking/interchange by batch number, student dropout is 0, and Lightning averages both the
accumulated micro-batches and the ranks' gradients, so the two runs should end at (nearly) the same weights.
"""

import json

import pytest
import torch
from diito.cli import main
from lmlab.logging import read_jsonl
from lmlab.testing import save_tiny_model, write_text_corpus
from lmlab.testing.trace_batches import run_traced

MAP = {
    "interchange_variable_mappings": [
        {
            "teacher_variable_names": ["$L:[1:3]$H:[0:2]$[0:16]"],
            "student_variable_names": ["$L:0$H:[0:2]$[0:16]"],
        }
    ]
}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_accumulation(tmp_path):
    d = tmp_path
    save_tiny_model(d / "teacher", "bert", "mlm", layers=4, hidden=32, heads=2, hidden_dropout_prob=0.0)
    corpus = write_text_corpus(d, n=120)
    assert main(["binarize", "--input", str(corpus), "--tokenizer_name", str(d / "teacher"),
                 "--dump_file", str(d / "bin")]) == 0  # fmt: skip
    assert main(["token-counts", "--data_file", str(d / "bin.train.teacher.npz"),
                 "--token_counts_dump", str(d / "counts.npy")]) == 0  # fmt: skip
    assert main(["extract", "--teacher_name", str(d / "teacher"), "--dump_checkpoint", str(d / "student"),
                 "--layers", "0", "2"]) == 0  # fmt: skip
    cfg = json.loads((d / "student" / "config.json").read_text())
    cfg.update(dropout=0.0, attention_dropout=0.0)
    (d / "student" / "config.json").write_text(json.dumps(cfg))
    (d / "map.nm").write_text(json.dumps(MAP))

    def run(name, steps, *extra, trace_name=None):
        args = [
            "train", "--teacher_name", str(d / "teacher"), "--student_pretrained_weights", str(d / "student"),
            "--data_file", str(d / "bin.train.teacher.npz"), "--token_counts", str(d / "counts.npy"),
            "--neuron_mapping", str(d / "map.nm"), "--mlm", "--alpha_ce", "0.25", "--alpha_mlm", "0.25",
            "--alpha_cos", "0.25", "--alpha_clm", "0", "--alpha_causal_ce", "0.25", "--alpha_causal_cos", "0.1",
            "--batch_size", "4", "--learning_rate", "2e-3", "--max_steps", str(steps),
            "--log_every_n_steps", "1", "--checkpoint_every_n_steps", "2", "--progress_bar", "false",
            "--logger", "none", "--device", "cpu", "--output_dir", str(d / name), *extra,
        ]  # fmt: skip
        return run_traced(
            "diito.trainer:DiitoModule", "diito.cli:main", args, d / f"trace_{trace_name or name}"
        )

    t1 = run("one", 8, "--devices", "1", "--gradient_accumulation_steps", "2")
    t2 = run("two", 8, "--devices", "2", "--strategy", "ddp", "--gradient_accumulation_steps", "1")
    assert set(t2) == {"rank0", "rank1"}
    for step in range(8):  # rank r reads batch 2 * step + r: the one-process run's two micro-batches
        a, b = t2["rank0"][step], t2["rank1"][step]
        assert {n for n, *_ in a} == {2 * step} and {n for n, *_ in b} == {2 * step + 1}
        assert not {k[-1] for k in a} & {k[-1] for k in b}
        assert a == t1["rank0"][2 * step] and b == t1["rank0"][2 * step + 1]
    s1 = torch.load(d / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    s2 = torch.load(d / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert s1["global_step"] == s2["global_step"] == 8
    assert s1["batches_seen"] == 16 and s2["batches_seen"] == 8  # micro-batches, per rank
    for key, w in s1["state_dict"].items():
        torch.testing.assert_close(s2["state_dict"][key], w, atol=1e-4, rtol=1e-3)
    losses = [r["train/loss"] for r in read_jsonl(d / "two" / "metrics.jsonl") if "train/loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert (d / "two" / "model" / "config.json").is_file() and (d / "two" / "results.json").is_file()
    # an interrupted two-process run (its folder without DONE) resumes from its last.ckpt at exactly the next batch
    # of each rank (a finished one given --force starts afresh: lmlab.training.resume_checkpoint)
    (d / "two" / "DONE").unlink()
    t3 = run("two", 10, "--devices", "2", "--strategy", "ddp", "--gradient_accumulation_steps", "1",
             trace_name="resumed")  # fmt: skip
    assert {n for n, *_ in t3["rank0"][0]} == {16} and {n for n, *_ in t3["rank1"][0]} == {17}
    s3 = torch.load(d / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert s3["global_step"] == 10 and s3["batches_seen"] == 10
    assert len([r for r in read_jsonl(d / "two" / "metrics.jsonl") if "train/loss" in r]) == 10
