"""The bench's FLOP model, accumulation, environment column, config checks."""

import json

import pytest
import torch
from invariant_lm.cli import main


def test_predicted_dense_ratio_matches_spec_formula():
    from invariant_lm.bench import predicted_dense_ratio
    from invariant_lm.config import BenchConfig

    cfg = BenchConfig(seq_len=512)  # RoBERTa-base: (189 + 78 n) / (189 + 78)
    assert predicted_dense_ratio(cfg, 4) == pytest.approx(1.88, abs=0.03)
    assert predicted_dense_ratio(cfg, 8) == pytest.approx(3.05, abs=0.05)


def test_gradient_accumulation_uses_micro_batches_of_the_same_env():
    from invariant_lm._testing import args, batches, tiny
    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import InvariantTrainer

    base, tok = tiny("bert")
    b1, b2 = batches(tok, 2)
    model = InvariantMLM.from_base(base, ["a", "b"])
    tr = InvariantTrainer(model, args(), tokenizer=tok, total_updates=2)
    loss = tr.update("a", [b1, b2])
    model2 = InvariantMLM.from_base(tiny("bert")[0], ["a", "b"])
    l1 = model2(**b1).loss.item()
    l2 = model2(**b2).loss.item()
    assert loss == pytest.approx((l1 + l2) / 2, abs=1e-5)
    assert tr.updates == 1 and tr.env_updates == {"a": 1, "b": 0}


def test_env_column_table(tmp_path):
    from invariant_lm.data import load_environments

    rows = [{"text": f"line {i}", "env": "x" if i % 3 else "y"} for i in range(9)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    envs = load_environments(path, env_column="env")
    assert list(envs) == ["x", "y"] and len(envs["x"]) == 6 and len(envs["y"]) == 3


def test_config_checks_exit_2():
    assert main(["train", "--head_decoder", "tied"]) == 2
    assert main(["train", "--mlm_probability", "1.5"]) == 2
    assert main(["bench", "--sparse", "maybe"]) == 2


@pytest.mark.gpu
def test_cuda_bf16_update_isolates_heads_and_matches_dense():
    from invariant_lm._testing import args, batches, snapshot, tiny
    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import InvariantTrainer

    base, tok = tiny("roberta")
    model = InvariantMLM.from_base(base, ["a", "b", "c"]).cuda()
    tr = InvariantTrainer(model, args(), tokenizer=tok, total_updates=3)
    b = {k: v.cuda() for k, v in batches(tok, 1)[0].items()}
    before = {e: snapshot(h) for e, h in model.heads.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        sparse = model(**b, sparse=True).loss.item()
        dense = model(**b, sparse=False).loss.item()
        tr.update("c", b)
    assert sparse == pytest.approx(dense, rel=2e-2)
    for e in ("a", "b"):
        assert all(torch.equal(v, before[e][k]) for k, v in model.heads[e].state_dict().items())
    assert not torch.equal(model.heads["c"].weight, before["c"]["weight"])
