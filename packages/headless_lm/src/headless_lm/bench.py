"""`headless-lm bench`: headless (CWT) vs vanilla (head + CE) in one process, same config, seed, batch,
precision, attention backend and optimizer. Times >= 3 warm-up and >= 20 timed steps with device
synchronisation; reports tokens/s, ms/step, peak memory (CUDA) or loss-matrix element counts (CPU), parameter
counts and the FLOP model of spec §9. Never fails on a threshold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from headless_lm.config import BenchConfig
from headless_lm.losses import cwt_loss
from headless_lm.masking import mask_tokens
from headless_lm.modeling import backbone, build_model, count_parameters
from headless_lm.objectives import causal_lm_loss, masked_lm_loss

PRESETS = {
    # lead's GPU run: spec §9 sizes
    "gpu": {
        "clm_batch": 8,
        "clm_seq": 2048,
        "mlm_batch": 64,
        "mlm_seq": 128,
        "loss_k": 16376,
        "loss_v": 50304,
        "loss_d": 512,
        "vocab_sweep": [8192, 16384, 32768, 50304, 100352, 200704],
        "k_sweep": [2048, 8192, 16376, 32768, 65504],
    },
    # 2-core CPU: same architectures, shorter sequences and smaller batches
    "cpu": {
        "clm_batch": 2,
        "clm_seq": 64,
        "mlm_batch": 2,
        "mlm_seq": 128,
        "loss_k": 2048,
        "loss_v": 50304,
        "loss_d": 512,
        "vocab_sweep": [8192, 16384],
        "k_sweep": [256, 512],
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    ms = (time.perf_counter() - start) / steps * 1000
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"ms_per_step": ms, "peak_mem_gib": peak}


def flop_model(n_nonemb: int, layers: int, d: int, v: int, tokens: int, k: int, seq: int) -> dict:
    """Forward FLOPs per step (x3 for forward+backward): body 2*N_nonemb + attention 2*L*T*D per token,
    head 2*D*V per predicted position, CWT 2*K*D per predicted position."""
    body = tokens * (2 * n_nonemb + 2 * layers * seq * d)
    head = 2 * k * d * v
    cwt = 2 * k * k * d
    return {
        "body_gflop": 3 * body / 1e9,
        "head_gflop": 3 * head / 1e9,
        "cwt_gflop": 3 * cwt / 1e9,
        "predicted_speedup": (body + head) / (body + cwt),
    }


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _train_step(
    model, opt, kind, ids, masked, headless: bool, full: bool, device, bf16: bool
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            if kind == "clm":
                out = causal_lm_loss(
                    model,
                    ids,
                    emb_loss_weight=float(headless),
                    lm_loss_weight=float(not headless),
                    compute_accuracy=False,
                )
            else:
                out = masked_lm_loss(
                    model,
                    ids,
                    masking=masked,
                    emb_loss_weight=float(headless),
                    mlm_loss_weight=float(not headless),
                    full_head=full,
                    compute_accuracy=False,
                )
        out.total_loss.backward()
        opt.step()

    return step


def bench_model_step(
    cfg: BenchConfig, kind: str, sizes: dict, device: torch.device, bf16: bool
) -> list[dict]:
    from headless_lm.modeling import attention_implementation

    batch = cfg.batch_size or sizes[f"{kind}_batch"]
    seq = cfg.seq_len or sizes[f"{kind}_seq"]
    arch = cfg.clm_arch if kind == "clm" else cfg.mlm_arch
    attn = attention_implementation(cfg.attn, str(device))
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g).to(device)
    variants = [("headless", True, None)]
    if kind == "clm":
        variants.append(("vanilla", False, None))
    else:
        if cfg.mlm_vanilla in ("full", "both"):
            variants.append(("vanilla_full", False, True))
        if cfg.mlm_vanilla in ("sparse", "both"):
            variants.append(("vanilla_sparse", False, False))
    masked = (
        mask_tokens(
            ids,
            vocab_size=cfg.vocab_size,
            mask_token_id=4,
            special_token_ids=(0, 1, 2, 3, 4),
            generator=torch.Generator(device=device).manual_seed(cfg.seed),
        )
        if kind == "mlm"
        else None
    )
    rows = []
    for name, headless, full in variants:
        torch.manual_seed(cfg.seed)
        model = build_model(
            kind,
            arch,
            vocab_size=cfg.vocab_size,
            max_position_embeddings=max(seq, 128),
            attn_implementation=attn,
            headless=headless,
        ).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        step = _train_step(model, opt, kind, ids, masked, headless, bool(full), device, bf16)

        timing = time_fn(step, device, cfg.warmup_steps, cfg.steps)
        print(
            f"[headless-lm bench] {kind} {name} B {batch} T {seq}: {timing['ms_per_step']:.1f} ms/step",
            flush=True,
        )
        body = backbone(model)
        d = body.get_input_embeddings().weight.shape[1]
        k = batch * (seq - 1) if kind == "clm" else int(masked.mask.sum())
        logit_positions = batch * seq if full else k
        rows.append(
            {
                "bench": f"{kind}_step",
                "variant": name,
                "arch": arch,
                "batch": batch,
                "seq": seq,
                "vocab": cfg.vocab_size,
                "K": k,
                "params": count_parameters(model),
                "tokens_per_s": batch * seq / (timing["ms_per_step"] / 1000),
                **timing,
                "loss_matrix_elements": k * k if headless else logit_positions * cfg.vocab_size,
            }
        )
        n_emb = body.get_input_embeddings().weight.numel()
        n_layers = getattr(body.config, "num_hidden_layers", None) or getattr(body.config, "n_layer", 1)
        rows[-1]["flops"] = flop_model(
            count_parameters(body) - n_emb, n_layers, d, cfg.vocab_size, batch * seq, k, seq
        )
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["headless_speedup_vs_this"] = base / r["tokens_per_s"]
    return rows


def bench_loss_only(k: int, v: int, d: int, cfg: BenchConfig, device: torch.device, bf16: bool) -> list[dict]:
    """Head + CE (logits K x V) vs CWT (K x K) on the same hidden states; forward + backward."""
    g = torch.Generator().manual_seed(cfg.seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    hidden = torch.randn(k, d, generator=g).to(device, dtype).requires_grad_(True)
    emb = (torch.randn(v, d, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    head = (torch.randn(v, d, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    ids = torch.randint(0, v, (k,), generator=g).to(device)

    def vanilla() -> None:
        F.cross_entropy((hidden @ head.T).float(), ids).backward()

    def headless() -> None:
        cwt_loss(hidden, F.embedding(ids, emb)).backward()

    rows = []
    for name, fn, elements in (("head+CE", vanilla, k * v), ("CWT", headless, k * k)):
        timing = time_fn(fn, device, cfg.warmup_steps, cfg.steps)
        print(
            f"[headless-lm bench] loss-only {name} K {k} V {v} D {d}: {timing['ms_per_step']:.1f} ms",
            flush=True,
        )
        rows.append(
            {
                "bench": "loss_only",
                "variant": name,
                "K": k,
                "V": v,
                "D": d,
                **timing,
                "loss_matrix_elements": elements,
            }
        )
        hidden.grad = emb.grad = head.grad = None
    rows[1]["speedup"] = rows[0]["ms_per_step"] / rows[1]["ms_per_step"]
    if rows[0]["peak_mem_gib"] and rows[1]["peak_mem_gib"]:
        rows[1]["memory_ratio"] = rows[0]["peak_mem_gib"] / rows[1]["peak_mem_gib"]
    return rows


def to_markdown(result: dict) -> str:
    lines = [f"# headless-lm bench ({result['device']}, {result['precision']})", ""]
    lines += [
        "| bench | variant | sizes | ms/step | tokens/s | peak GiB | loss-matrix elements | params | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["bench"].endswith("_step"):
            sizes = f"{r['arch']} B{r['batch']} T{r['seq']} V{r['vocab']} K{r['K']}"
            ratio = f"headless {r['headless_speedup_vs_this']:.2f}x"
            tps = f"{r['tokens_per_s']:.0f}"
            params = f"{r['params']:,}"
        else:
            sizes = f"K{r['K']} V{r['V']} D{r['D']}"
            ratio = f"{r['speedup']:.2f}x faster" if "speedup" in r else ""
            tps, params = "", ""
        peak = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "n/a (CPU)"
        lines.append(
            f"| {r['bench']} | {r['variant']} | {sizes} | {r['ms_per_step']:.1f} | {tps} | {peak} | "
            f"{r['loss_matrix_elements']:,} | {params} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def run_bench(cfg: BenchConfig) -> dict:
    from lmlab.device import torch_device

    device = torch_device(cfg.device)
    preset = cfg.preset if cfg.preset != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    sizes = PRESETS[preset]
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    k, v, d = cfg.loss_k or sizes["loss_k"], cfg.loss_v or sizes["loss_v"], cfg.loss_d or sizes["loss_d"]
    rows: list[dict] = []
    if cfg.task in ("loss", "all"):
        rows += bench_loss_only(k, v, d, cfg, device, bf16)
    if cfg.task in ("clm", "all"):
        rows += bench_model_step(cfg, "clm", sizes, device, bf16)
    if cfg.task in ("mlm", "all"):
        rows += bench_model_step(cfg, "mlm", sizes, device, bf16)
    if cfg.task in ("sweep", "all"):
        for vv in sizes["vocab_sweep"]:
            rows += [dict(r, bench="vocab_sweep") for r in bench_loss_only(k, vv, d, cfg, device, bf16)]
        for kk in sizes["k_sweep"]:
            rows += [dict(r, bench="k_sweep") for r in bench_loss_only(kk, v, d, cfg, device, bf16)]
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16 autocast" if bf16 else "fp32",
        "preset": preset,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = to_markdown(result)
    (out / "bench.md").write_text(md)
    print(md)
    print(f"[headless-lm bench] wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return {"rows": len(rows)}
