"""`bench` (spec §12): the in-place sweep engine against the reference's reload-per-point approach, in one
run, on a randomly initialised T5 (no download).

naive (per point): re-read both endpoint files, build the model from its directory, load the interpolated
state dict, move it to the device, evaluate. efficient: endpoints loaded once onto the device, the
interpolated tensors written in place (`torch._foreach_lerp_`), evaluate. Overhead = everything at a point
but the evaluation (timed separately at the same point). With `--mode both` the engines alternate point by
point so that changing machine load affects both alike.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lmlab.logging import get_logger

from mode_connectivity.models import delta_state, load_checkpoint, prepare_model, save_checkpoint
from mode_connectivity.sweep import InterpolationSweep, interpolate_state_dicts, interpolation_grid

log = get_logger("mode-connectivity")

CONFIGS = {
    "tiny": {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 4, "vocab_size": 1100},
    "t5-base-shaped": {"d_model": 768, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "vocab_size": 32128},
}


def _config(name: str):
    from transformers import T5Config

    c = CONFIGS[name]
    return T5Config(
        vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=64 if name != "tiny" else 16, d_ff=c["d_ff"],
        num_layers=c["num_layers"], num_decoder_layers=c["num_layers"], num_heads=c["num_heads"],
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, dropout_rate=0.0,
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _eval_batches(cfg, vocab: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for s in range(0, cfg.n_eval, cfg.batch_size):
        n = min(cfg.batch_size, cfg.n_eval - s)
        ids = torch.randint(3, vocab, (n, cfg.seq_len), generator=g)
        labels = torch.randint(3, vocab, (n, 4), generator=g)
        labels[:, -1] = 1
        out.append(
            {
                "input_ids": ids.to(device),
                "attention_mask": torch.ones_like(ids).to(device),
                "labels": labels.to(device),
            }
        )
    return out


@torch.no_grad()
def _evaluate(model, batches, mode: str, bf16: bool) -> float:
    device = next(model.parameters()).device
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if bf16
        else torch.autocast(device.type, enabled=False)
    )
    total = 0.0
    with ctx:
        for b in batches:
            if mode == "loss":
                total += float(model(**b).loss)
            else:
                model.generate(
                    input_ids=b["input_ids"],
                    attention_mask=b["attention_mask"],
                    max_new_tokens=4,
                    do_sample=False,
                    num_beams=1,
                )
    return total / max(1, len(batches))


def _build(model_dir: Path, tune_method: str, device: torch.device):
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(model_dir)
    if tune_method == "adapter":
        torch.manual_seed(0)
        model = prepare_model(model, "adapter", adapter_size=12)
    return model.to(device).eval()


def run_bench(cfg) -> dict[str, Any]:
    import transformers
    from lmlab.device import torch_device

    device = torch_device(cfg.device)
    bf16 = bool(cfg.bf16) and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = interpolation_grid(cfg.points)
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(cfg.seed)
    base = T5ForConditionalGeneration(_config(cfg.model_config))
    base.save_pretrained(tmp / "base")
    paths = []
    for k in range(2):  # two random endpoints
        torch.manual_seed(cfg.seed + 1 + k)
        m = prepare_model(
            T5ForConditionalGeneration.from_pretrained(tmp / "base"), cfg.tune_method, adapter_size=12
        )
        if cfg.tune_method == "model":
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
        paths.append(save_checkpoint(tmp / f"end{k}", m, cfg.tune_method, {"step": 0}))
        del m
    vocab = base.config.vocab_size
    del base
    batches = _eval_batches(cfg, vocab, device)
    result: dict[str, Any] = {
        "config": cfg.model_config, "tune_method": cfg.tune_method, "bench_eval": cfg.bench_eval, "n_eval": cfg.n_eval,
        "points": cfg.points, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": "bf16-autocast" if bf16 else "fp32", "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    losses: dict[str, list[float]] = {}
    timings: dict[str, dict[str, list[float]]] = {}
    engines = ["efficient", "naive"] if cfg.mode == "both" else [cfg.mode]
    sweep = model = None
    if "efficient" in engines:
        model = _build(tmp / "base", cfg.tune_method, device)
        t1, _ = load_checkpoint(paths[0])
        t2, _ = load_checkpoint(paths[1])
        sweep = InterpolationSweep(delta_state(model, cfg.tune_method), t1, t2)
        result["interpolated_numbers"] = sum(t.numel() for t in t1.values())
        _evaluate(model, batches[:1], cfg.bench_eval, bf16)  # warm-up
    # the engines alternate point by point, so a change in machine load hits both alike; each engine's
    # overhead is measured against its own evaluation time at the same point
    for a in grid:
        for engine in engines:
            _sync(device)
            t0 = time.perf_counter()
            if engine == "efficient":
                sweep.set(a)
                current = model
            else:
                a1, _ = load_checkpoint(paths[0])
                a2, _ = load_checkpoint(paths[1])
                current = _build(tmp / "base", cfg.tune_method, device)
                state = interpolate_state_dicts(a1, a2, a)
                live = delta_state(current, cfg.tune_method)
                with torch.no_grad():
                    for k, v in live.items():
                        v.copy_(state[k].to(device))
                del a1, a2, state
            _sync(device)
            t1_ = time.perf_counter()
            loss = _evaluate(current, batches, cfg.bench_eval, bf16)
            _sync(device)
            t2_ = time.perf_counter()
            rec = timings.setdefault(engine, {"overhead": [], "eval": []})
            rec["overhead"].append(t1_ - t0)
            rec["eval"].append(t2_ - t1_)
            losses.setdefault(engine, []).append(loss)
            if engine == "naive":
                del current
    n = len(grid)
    for engine, rec in timings.items():
        over, ev = sum(rec["overhead"]) / n, sum(rec["eval"]) / n
        result[engine] = {
            "seconds_per_point": over + ev,
            "eval_seconds_per_point": ev,
            "overhead_seconds_per_point": over,
            "overhead_fraction_of_eval": over / ev,
        }
    if "naive" in result and "efficient" in result:
        e, nv = result["efficient"], result["naive"]
        result["speedup_per_point"] = nv["seconds_per_point"] / e["seconds_per_point"]
        result["overhead_ratio_naive_over_efficient"] = nv["overhead_seconds_per_point"] / max(
            e["overhead_seconds_per_point"], 1e-9
        )
        result["same_losses"] = (
            max(abs(x - y) for x, y in zip(losses["naive"], losses["efficient"], strict=True)) < 1e-3
        )
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(bench_markdown(result))
    print(bench_markdown(result))
    print(f"results in {out}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {k: v for k, v in result.items() if isinstance(v, int | float | str | bool)}


def bench_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# bench: {r['config']} T5, tune_method {r['tune_method']}, eval {r['bench_eval']}, "
        f"{r['n_eval']} examples x {r['points']} points on {r['device']} ({r['device_name']}, {r['dtype']})",
        "",
        "| engine | s / point | eval-only s / point | overhead s / point | overhead / eval |",
        "|---|---|---|---|---|",
    ]
    for k in ("naive", "efficient"):
        if k in r:
            x = r[k]
            frac = (
                x["overhead_seconds_per_point"] / x["eval_seconds_per_point"]
                if x["eval_seconds_per_point"]
                else 0.0
            )
            lines.append(
                f"| {k} | {x['seconds_per_point']:.4f} | {x['eval_seconds_per_point']:.4f} | "
                f"{x['overhead_seconds_per_point']:.5f} | {100 * frac:.2f}% |"
            )
    if "speedup_per_point" in r:
        lines += [
            "",
            f"speed-up per point {r['speedup_per_point']:.2f}x; overhead naive / efficient "
            f"{r['overhead_ratio_naive_over_efficient']:.0f}x; same losses on both paths: {r['same_losses']}",
        ]
    return "\n".join(lines) + "\n"
