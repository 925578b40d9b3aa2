"""`camels bench` (issue 13): interleaved rounds, rows in lmlab's bench schema, peak memory measured from the
state before each step; and `--compile`: a compiled training step equals the eager one (aot_eager backend, set
by the root conftest)."""

import copy
import json

import pytest
import torch
from camels import bench
from camels.cli import main
from camels.config import QaPretrainConfig
from camels.data import collate_qa
from camels.meta import MetaConfig, MetaTrainer
from camels.qa_pretrain import QaPretrainModule
from camels.weighting import CaMeLSWeightModel
from lmlab.testing import tiny_config, tiny_model
from lmlab.training import compile_module

KEYS = {
    "package", "measure", "method", "baseline", "method_median", "baseline_median", "method_range",
    "baseline_range", "rounds", "ratio", "target", "met",
}  # fmt: skip
NO_DROP = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}


def test_toy_bench_through_the_console_entry(tmp_path, capsys):
    assert main(["bench", "--preset", "toy", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())
    pairs = [(r["method"], r["baseline"], "time" in r["measure"]) for r in rows]
    assert sorted(pairs) == sorted(
        [(m, b, t) for m, b in (("adjoint", "unroll"), ("unroll", "unroll_padded")) for t in (True, False)]
    )
    for row in rows:
        assert set(row) >= KEYS and row["package"] == "camels"
        assert row["rounds"] >= 3  # interleaved rounds, every mode once per round
        for arm in ("method", "baseline"):
            low, high = row[f"{arm}_range"]
            assert 0 < low <= row[f"{arm}_median"] <= high
        assert row["ratio"] == pytest.approx(row["method_median"] / row["baseline_median"])
        assert row["target"] is None and row["met"] is None  # the targets are GPU figures
        assert row["environment"]["shapes"]["size"] == "toy" and row["environment"]["threads"] == 1
        assert row["adapt_docs_per_s"] > 0 and row["gen_questions_per_s"] > 0
        assert f"| {row['ratio']:.3f} |" in out  # the ratio is printed, not only written
    assert "| ratio |" in out and "1 thread(s)" in out


def test_cpu_memory_is_what_each_step_allocates(monkeypatch):
    """Every round reads the resident set before its step and the peak during it: a step that allocates 48, 16
    and 32 MiB reads as such (without the peak reset, the second round would read the first round's peak)."""
    sizes = iter([48, 16, 32])

    def step(self, mode):
        blocks = [torch.ones(2**20 // 4) for _ in range(next(sizes))]  # n blocks of 1 MiB, touched
        del blocks

    monkeypatch.setattr(bench.MetaStepSetup, "step", step)
    opts = {**bench.PRESETS["toy"], "modes": ["unroll"], "keep_last": 1, "seed": 0, "compile": False}
    peaks = bench.cpu_memory_rounds("unroll", {**opts, "threads": 1, "rounds": 3})
    assert [p / 2**20 for p in peaks] == [pytest.approx(n, abs=4) for n in (48, 16, 32)]


def test_bench_refuses_unknown_modes(tmp_path, capsys):
    assert main(["bench", "--preset", "toy", "--modes", "unroll,fast", "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--modes" in err[0] and "fast" in err[0]
    assert not (tmp_path / "bench.json").exists()


def test_compiled_qa_pretrain_step_equals_eager():
    model, tok = tiny_model("gpt2", "clm", seed=0, hidden=16, layers=1, heads=2, **NO_DROP)
    pairs = [("Who wrote the notes?", "Ada Lovelace"), ("Where is the tower?", "Paris")]
    batch = collate_qa(tok, pairs)
    grads = {}
    for compiled in (False, True):
        m = compile_module(copy.deepcopy(model), compiled)
        module = QaPretrainModule(m, tok, pairs, pairs, QaPretrainConfig(dataset="synthetic"))
        loss = module.training_step(batch, 0)
        loss.backward()
        grads[compiled] = (loss.detach(), [p.grad.clone() for p in m.parameters()])
    assert torch.allclose(grads[True][0], grads[False][0], atol=1e-6)
    for c, e in zip(grads[True][1], grads[False][1], strict=True):
        assert torch.allclose(c, e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", ["unroll", "adjoint"])
def test_compiled_weighting_model_meta_step_equals_eager(mode):
    """meta-train --compile compiles the weighting model (the base stays eager: its tape needs double
    backward); one MetaTrainer batch gives the eager gradients."""
    base, tok = tiny_model(
        "gpt2", "clm", seed=0, hidden=16, layers=1, heads=2, attn_implementation="eager", **NO_DROP
    )
    torch.manual_seed(1)
    wm = CaMeLSWeightModel(tiny_config("gpt2", tok, hidden=16, layers=1, heads=2, **NO_DROP), hidden=8)
    torch.nn.init.normal_(wm.head[2].weight, std=0.5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, base.config.vocab_size, (2, 9), generator=g)
    qa = torch.randint(3, base.config.vocab_size, (2, 6), generator=g)
    labels = qa.masked_fill(torch.arange(6) < 3, -100)
    batch = {"doc_ids": ids, "doc_mask": torch.ones_like(ids), "qa_ids": qa, "qa_mask": torch.ones_like(qa)}
    batch["qa_labels"] = labels
    loc = {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1])}
    cfg = MetaConfig(inner_lr=0.5, max_text_len=12, meta_grad_mode=mode, grad_acc_steps=2)
    grads = {}
    for compiled in (False, True):
        w = compile_module(copy.deepcopy(wm), compiled)
        metrics = MetaTrainer(w, base, None, cfg, 2, 4).train_batch(batch, loc)
        grads[compiled] = (metrics["total_loss"], [p.grad.clone() for p in w.parameters()])
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-6)
    for c, e in zip(grads[True][1], grads[False][1], strict=True):
        assert torch.allclose(c, e, atol=1e-7, rtol=1e-4)
