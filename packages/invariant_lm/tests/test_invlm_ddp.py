"""Data-parallel IRM-games: rank sharding of the streams, and a 2-process CPU (gloo) DDP run of the CLI that
matches one process with the same global batch and never touches the heads that are not stepped."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from invariant_lm.cli import main
from invariant_lm.data import EnvironmentStreams, make_collator
from invariant_lm.model import InvariantMLM
from lmlab.testing import save_tiny_model, tiny_tokenizer, write_environments
from safetensors.torch import load_file

ENVS = ("a_env", "b_env", "c_env")


def test_rank_shards_partition_the_global_batch():
    from invariant_lm._testing import tokenised

    tok = tiny_tokenizer("roberta")
    data = {"x": tokenised(tok, 40, 16), "y": tokenised(tok, 40, 16, offset=40)}
    coll = make_collator(tok)
    single = EnvironmentStreams(data, coll, 6, seed=3)
    shards = [EnvironmentStreams(data, coll, 2, seed=3, world_size=3, rank=r) for r in range(3)]
    assert single.min_batches_per_epoch() == shards[0].min_batches_per_epoch()
    for e in (0, 1):
        for k in range(single.batches_per_epoch(e) + 2):  # crosses an epoch boundary (reshuffle)
            full = single.batch(e, k)
            parts = [s.batch(e, k) for s in shards]
            for key in full:
                assert torch.equal(torch.cat([p[key] for p in parts]), full[key]), (e, k, key)
            assert not torch.equal(parts[0]["input_ids"], parts[1]["input_ids"])  # ranks see other rows
    n = len(data["x"])
    with pytest.raises(Exception, match=f"global batch of {3 * n}"):
        EnvironmentStreams(data, coll, n, seed=3, world_size=3)


def _args(root: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(root / "model"), "--train_file", str(root / "envs"),
            "--nb_steps", "6", "--learning_rate", "1e-3", "--adam_epsilon", "1e-6", "--output_dir", str(out),
            "--seed", "5", "--max_seq_length", "32", "--per_device_train_batch_size", str(batch),
            "--logging_steps", "1", "--save_steps", "100", "--progress_bar", "false", "--logger", "none",
            "--device", "cpu", "--nb_steps_heads_saving", "1", *extra]  # fmt: skip


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    save_tiny_model(tmp_path / "model", "roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    write_environments(tmp_path / "envs", ENVS, n=30)
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert main(_args(tmp_path, one, 4)) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "invariant_lm", *_args(tmp_path, ddp, 2, "--devices", "2", "--strategy", "ddp")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ddp / "DONE").exists() and json.loads((ddp / "results.json").read_text())["train"]["updates"] == 6

    # the same update schedule, the same global loss and gradient norm (float summation order aside)
    log1, log2 = _log(one), _log(ddp)
    assert [r["env"] for r in log2] == [r["env"] for r in log1] == list(ENVS) * 2
    for a, b in zip(log1, log2, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(a["loss"])), (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-3 * max(1.0, a["grad_norm"]), (a, b)
        assert a["n_masked"] == b["n_masked"]
    # nearly the same final parameters
    p1, p2 = (InvariantMLM.from_pretrained(d).state_dict() for d in (one, ddp))
    assert p1.keys() == p2.keys()
    init = InvariantMLM.from_base(str(tmp_path / "model"), list(ENVS))
    moved = 0
    for k in p1:
        assert torch.allclose(p1[k], p2[k], rtol=1e-4, atol=2e-5), (k, (p1[k] - p2[k]).abs().max())
        moved += not torch.equal(p2[k], init.state_dict()[k])
    assert moved > len(p1) // 2  # training did move the parameters
    # rank 0 wrote a resumable checkpoint holding the same weights and all n + 1 optimizer states
    ck = torch.load(ddp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 6 and len(ck["optimizer_states"]) == len(ENVS) + 1
    for k, v in ck["state_dict"].items():
        assert torch.equal(v, p2[k.removeprefix("model.")]), k

    # heads that are not stepped stay bit-identical, update by update, on the data-parallel run
    heads = {e: {k: v for k, v in init.heads[e].state_dict().items()} for e in ENVS}
    for u in range(1, 7):
        stepped = ENVS[(u - 1) % len(ENVS)]
        for e in ENVS:
            now = load_file(str(ddp / "lm_heads" / f"{e}-{u}.safetensors"))
            same = all(torch.equal(now[k], heads[e][k]) for k in now)
            assert same == (e != stepped), (u, e)
            heads[e] = now
