"""CUDA-only checks (skipped without a GPU): adjoint == unroll on the device, bf16 adaptation and generation."""

import pytest
import torch
from camels.meta import MetaConfig, base_params, meta_step
from camels.weighting import CaMeLSWeightModel
from lmlab.testing import tiny_config, tiny_model, tiny_tokenizer


@pytest.mark.gpu
def test_adjoint_equals_unroll_on_cuda():
    model, _ = tiny_model("gpt2", "clm", hidden=32, layers=2, heads=2, attn_implementation="eager")
    model = model.cuda().double()
    V = model.config.vocab_size
    ids = torch.randint(5, V, (3, 10), device="cuda")
    qa = torch.randint(5, V, (3, 6), device="cuda")
    labels = qa.clone()
    labels[:, :3] = -100
    batch = {
        "doc_ids": ids,
        "doc_mask": torch.ones_like(ids),
        "qa_ids": qa,
        "qa_mask": torch.ones_like(qa),
        "qa_labels": labels,
    }
    loc = {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1])}
    grads = {}
    for mode in ("unroll", "adjoint"):
        torch.manual_seed(0)
        wm = (
            CaMeLSWeightModel(
                tiny_config("gpt2", tiny_tokenizer("gpt2"), hidden=32, layers=1, heads=2), hidden=8
            )
            .cuda()
            .double()
            .eval()
        )
        torch.nn.init.normal_(wm.head[2].weight, std=0.5)
        torch.cuda.manual_seed(1)
        meta_step(
            wm,
            model,
            base_params(model),
            batch,
            loc,
            MetaConfig(inner_lr=1.0, max_text_len=16, meta_grad_mode=mode),
        )
        grads[mode] = torch.cat([p.grad.flatten() for p in wm.parameters()])
    assert torch.allclose(grads["adjoint"], grads["unroll"], rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
def test_bench_runs_on_cuda(tmp_path):
    from camels.bench import run_bench
    from camels.config import BenchConfig

    out = run_bench(
        BenchConfig(
            output_dir=str(tmp_path),
            preset="toy",
            device="cuda",
            size="tiny",
            doc_len=64,
            max_text_len=128,
            rounds=3,
            warmup=1,
            eval_size="tiny",
            dtype="bfloat16",
        )
    )
    assert out["adjoint/unroll time"] > 0 and (tmp_path / "bench.md").is_file()
