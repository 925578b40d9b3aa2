"""`bench` (spec §12): the in-place sweep engine against the reference's reload-per-point approach, in one
run, on a randomly initialised T5 (no download), for the full model and for adapters.

Three arms, timed by `lmlab.bench.interleave` in rounds whose order rotates (after `--warmup` untimed calls of
each), one round per grid point:

- reload (the reference, per point): re-read both endpoint files, build the model from its directory, load the
  interpolated state dict, move it to the device;
- in-place sweep: endpoints loaded once onto the device, the interpolated tensors written into the live
  parameters (`torch._foreach_lerp_`);
- evaluation: the loss (or generation) over the eval set at the current point, the same for both engines.

Rows per tune method: sweep overhead vs reload (how many times less), time per point end to end (sweep +
evaluation vs reload + evaluation, summed round by round), and the sweep's overhead as a fraction of the
evaluation. After the timing both engines are evaluated at the first, middle and last grid points and their
losses compared (`max_loss_diff`, `same_losses`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lmlab.bench import comparison, environment, interleave, write_bench
from lmlab.errors import LmlabError
from lmlab.training import compile_module

from mode_connectivity.models import delta_state, load_checkpoint, prepare_model, save_checkpoint
from mode_connectivity.sweep import InterpolationSweep, interpolate_state_dicts, interpolation_grid

CONFIGS = {
    "tiny": {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4, "vocab_size": 1100},
    "t5-base-shaped": {"d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12, "vocab_size": 32128},
}  # fmt: skip
# what `-1`/`auto` mean under each preset
PRESETS = {
    "toy": {"model_config": "tiny", "n_eval": 8, "points": 4, "warmup": 1, "seq_len": 16, "batch_size": 4,
            "dtype": "fp32", "device": "cpu", "threads": 1},
    "cpu": {"model_config": "tiny", "n_eval": 256, "points": 26, "warmup": 2, "seq_len": 64, "batch_size": 32,
            "dtype": "fp32", "device": "cpu", "threads": 1},
    "gpu": {"model_config": "t5-base-shaped", "n_eval": 256, "points": 26, "warmup": 1, "seq_len": 64,
            "batch_size": 32, "dtype": "bf16", "device": "cuda", "threads": 0},  # 0: leave
}  # fmt: skip
ADAPTER_SIZE = 12
LABELS = {"model": "full model", "adapter": "adapters"}
# spec §12: the GPU acceptance (T5-base-shaped full model) is an overhead at least 20x smaller than reloading
# (233x measured on an H100, the figure to keep); efficient per-point time below naive and overhead <= 5% of the
# evaluation are the spec's tiny-CPU acceptance, held on every preset
OVERHEAD_TARGET = ">= 20"


def _resolve(cfg) -> dict[str, Any]:
    """The preset's values for every field left at -1/auto."""
    preset = cfg.preset
    if preset == "auto":
        preset = "gpu" if torch.cuda.is_available() else "cpu"
    chosen = {"preset": preset}
    for key, value in PRESETS[preset].items():
        mine = getattr(cfg, key)
        chosen[key] = value if mine in (-1, "auto") else mine
    return chosen


def _config(name: str):
    from transformers import T5Config

    c = CONFIGS[name]
    return T5Config(
        vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["d_kv"], d_ff=c["d_ff"],
        num_layers=c["num_layers"], num_decoder_layers=c["num_layers"], num_heads=c["num_heads"],
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, dropout_rate=0.0,
    )  # fmt: skip


def _eval_batches(run: dict[str, Any], seed: int, vocab: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, run["n_eval"], run["batch_size"]):
        n = min(run["batch_size"], run["n_eval"] - s)
        ids = torch.randint(3, vocab, (n, run["seq_len"]), generator=g)
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
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
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


def _build(model_dir: Path, tune_method: str, device: torch.device, compiled: bool):
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(model_dir)
    if tune_method == "adapter":
        torch.manual_seed(0)
        model = prepare_model(model, "adapter", adapter_size=ADAPTER_SIZE)
    return compile_module(model.to(device).eval(), compiled)


def _reload(base: Path, paths: list[Path], tune_method: str, a: float, device, compiled: bool):
    """The reference's point: both checkpoints read again, the model rebuilt, the interpolation loaded."""
    t1, _ = load_checkpoint(paths[0])
    t2, _ = load_checkpoint(paths[1])
    model = _build(base, tune_method, device, compiled)
    state = interpolate_state_dicts(t1, t2, a)
    with torch.no_grad():
        for k, v in delta_state(model, tune_method).items():
            v.copy_(state[k].to(device))
    return model


def _endpoints(tmp: Path, tune_method: str, seed: int) -> list[Path]:
    """Two random endpoints on disk: the base perturbed (full model) or two random adapter sets."""
    from transformers import T5ForConditionalGeneration

    paths = []
    for k in range(2):
        torch.manual_seed(seed + 1 + k)
        m = prepare_model(
            T5ForConditionalGeneration.from_pretrained(tmp / "base"), tune_method, adapter_size=ADAPTER_SIZE
        )
        if tune_method == "model":
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
        paths.append(save_checkpoint(tmp / f"{tune_method}-end{k}", m, tune_method, {"step": 0}))
    return paths


def _bench_method(cfg, run, tune_method: str, tmp: Path, device, batches, sync) -> list[dict[str, Any]]:
    bf16 = run["dtype"] == "bf16"
    paths = _endpoints(tmp, tune_method, cfg.seed)
    model = _build(tmp / "base", tune_method, device, cfg.compile)
    t1, _ = load_checkpoint(paths[0])
    t2, _ = load_checkpoint(paths[1])
    sweep = InterpolationSweep(delta_state(model, tune_method), t1, t2)
    numbers = sum(t.numel() for t in t1.values())
    del t1, t2
    grid = interpolation_grid(run["points"])
    at = {"sweep": 0, "reload": 0}
    holder: dict[str, Any] = {}

    def sweep_arm():
        sweep.set(grid[at["sweep"] % len(grid)])
        at["sweep"] += 1

    def reload_arm():
        holder.pop("model", None)  # one rebuilt model alive at a time, as in the reference
        holder["model"] = _reload(
            tmp / "base", paths, tune_method, grid[at["reload"] % len(grid)], device, cfg.compile
        )
        at["reload"] += 1

    def eval_arm():
        _evaluate(model, batches, cfg.bench_eval, bf16)

    times = interleave(
        {"in-place sweep": sweep_arm, "reload per point": reload_arm, "evaluation": eval_arm},
        rounds=run["points"],
        warmup=run["warmup"],
        sync=sync,
    )
    holder.clear()
    diffs = []
    for a in sorted({grid[0], grid[len(grid) // 2], grid[-1]}):
        sweep.set(a)
        reloaded = _reload(tmp / "base", paths, tune_method, a, device, cfg.compile)
        diffs.append(
            abs(_evaluate(model, batches, "loss", bf16) - _evaluate(reloaded, batches, "loss", bf16))
        )
        del reloaded
    label = LABELS[tune_method]
    shape = f"{run['model_config']} T5"
    gpu = run["preset"] == "gpu"
    extra = {
        "tune_method": tune_method,
        "interpolated_numbers": numbers,
        "max_loss_diff": max(diffs),
        "same_losses": max(diffs) < 1e-3,
        "compile": cfg.compile,
    }
    sweep_t, reload_t, eval_t = (times[k] for k in ("in-place sweep", "reload per point", "evaluation"))
    per_point = {
        "sweep + evaluation": [s + e for s, e in zip(sweep_t, eval_t, strict=True)],
        "reload + evaluation": [r + e for r, e in zip(reload_t, eval_t, strict=True)],
    }
    return [
        comparison(
            "mode_connectivity", f"sweep overhead per point vs reload, {shape}, {label} (x less)",
            "in-place sweep", "reload per point", times, speedup=True,
            target=OVERHEAD_TARGET if gpu and tune_method == "model" else None, **extra,
        ),
        comparison(
            "mode_connectivity", f"time per point, {shape}, {label} (x faster)",
            "sweep + evaluation", "reload + evaluation", per_point, speedup=True, target="> 1", **extra,
        ),
        comparison(
            "mode_connectivity", f"sweep overhead / evaluation per point, {shape}, {label}",
            "in-place sweep", "evaluation", times, target="<= 0.05", **extra,
        ),
    ]  # fmt: skip


def run_bench(cfg) -> dict[str, Any]:
    from lmlab.device import torch_device
    from transformers import T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the reload arm loads the model at every point: one bar each
    run = _resolve(cfg)
    device = torch_device(run["device"])
    if run["dtype"] == "bf16" and device.type != "cuda":
        raise LmlabError("--dtype bf16 (bf16 autocast) needs a CUDA device; use --dtype fp32 on the CPU")
    if run["threads"]:
        torch.set_num_threads(run["threads"])  # recorded by environment()
    sync = None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    methods = ["model", "adapter"] if cfg.tune_method == "both" else [cfg.tune_method]
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    try:
        torch.manual_seed(cfg.seed)
        base = T5ForConditionalGeneration(_config(run["model_config"]))
        base.save_pretrained(tmp / "base")
        vocab = base.config.vocab_size
        del base
        batches = _eval_batches(run, cfg.seed, vocab, device)
        rows = [r for m in methods for r in _bench_method(cfg, run, m, tmp, device, batches, sync)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c = CONFIGS[run["model_config"]]
    shapes = {
        "model": f"{run['model_config']} T5 (d_model {c['d_model']}, {c['num_layers']}+{c['num_layers']} layers, "
        f"d_ff {c['d_ff']}, vocab {c['vocab_size']}), random weights",
        "adapter_size": ADAPTER_SIZE,
        "eval": f"{cfg.bench_eval}, {run['n_eval']} examples, batch {run['batch_size']}, length {run['seq_len']}",
        "points": run["points"],
        "warmup": run["warmup"],
        "preset": run["preset"],
    }
    dtype = "bf16 autocast, fp32 weights" if run["dtype"] == "bf16" else "fp32"
    write_bench(rows, environment(device, dtype, shapes), cfg.output_dir, "bench")
    print(f"results in {cfg.output_dir}")
    return {f"{r['method']} vs {r['baseline']}, {r['tune_method']}": r["ratio"] for r in rows}
