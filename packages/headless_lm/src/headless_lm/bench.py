"""`headless-lm bench`: headless (CWT) vs vanilla (head + CE) in one process, same config, seed, batch,
precision, attention backend and optimizer. The arms of each comparison are timed in interleaved rounds after
warm-up (`lmlab.bench.interleave`, device synchronisation before every clock read), so load drift falls on all
arms alike; every row carries the medians, the min-max, the ratio of medians (how many times the tokens/s of
the headless arm, i.e. baseline time / method time) and the target it is held to. Extra columns: tokens/s,
loss-matrix elements, parameters, the FLOP model of spec §9 and, on CUDA, each arm's step peak memory above the
resident models. Never fails on a threshold.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from headless_lm.config import BenchConfig
from headless_lm.losses import cwt_loss
from headless_lm.masking import mask_tokens
from headless_lm.modeling import backbone, build_model, count_parameters
from headless_lm.objectives import causal_lm_loss, masked_lm_loss

PACKAGE = "headless_lm"

PRESETS = {
    # issue 13 sizes on one GPU, bf16 autocast: Pythia-70m 8x2048, BERT-base 64x128, V 50k
    "gpu": {
        "clm_arch": "pythia-70m",
        "mlm_arch": "bert-base",
        "vocab": 50304,
        "clm_batch": 8,
        "clm_seq": 2048,
        "mlm_batch": 64,
        "mlm_seq": 128,
        "loss_k": 16376,
        "loss_v": 50304,
        "loss_d": 512,
        "vocab_sweep": [8192, 16384, 32768, 50304, 100352, 200704],
        "k_sweep": [2048, 8192, 16376, 32768, 65504],
        "warmup": 3,
        "rounds": 20,
    },
    # 2-core CPU: the same architectures and vocabulary, shorter sequences, smaller batches and K
    "cpu": {
        "clm_arch": "pythia-70m",
        "mlm_arch": "bert-base",
        "vocab": 50304,
        "clm_batch": 2,
        "clm_seq": 64,
        "mlm_batch": 2,
        "mlm_seq": 64,
        "loss_k": 512,
        "loss_v": 50304,
        "loss_d": 512,
        "vocab_sweep": [8192, 16384],
        "k_sweep": [256, 1024],
        "warmup": 1,
        "rounds": 5,
    },
    # seconds: the tests' sizes
    "toy": {
        "clm_arch": "tiny-gpt",
        "mlm_arch": "tiny-bert",
        "vocab": 1000,
        "clm_batch": 2,
        "clm_seq": 16,
        "mlm_batch": 2,
        "mlm_seq": 16,
        "loss_k": 64,
        "loss_v": 2000,
        "loss_d": 16,
        "vocab_sweep": [1000],
        "k_sweep": [32],
        "warmup": 1,
        "rounds": 3,
    },
}

# issue 13's targets: GPU figures (bf16, one H100/H200), so they apply to the gpu preset only
TARGETS = {"clm": ">= 1.8", "mlm_full": ">= 1.6"}


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


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


def _step_peak_gib(fn: Callable[[], None], device: torch.device) -> float | None:
    """CUDA only: the peak memory of one call above what was allocated before it (activations, logits,
    gradients), measured after the timed rounds, one arm at a time."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


def _timed(arms: dict, cfg: BenchConfig, sizes: dict, device: torch.device) -> dict[str, list[float]]:
    from lmlab.bench import interleave

    warmup = sizes["warmup"] if cfg.warmup_steps is None else cfg.warmup_steps
    rounds = cfg.rounds or sizes["rounds"]
    return interleave(arms, rounds=rounds, warmup=warmup, sync=_sync(device))


def bench_model_step(
    cfg: BenchConfig, kind: str, sizes: dict, device: torch.device, bf16: bool, gpu_targets: bool
) -> list[dict]:
    from lmlab.bench import comparison
    from lmlab.training import compile_module

    from headless_lm.modeling import attention_implementation

    batch = cfg.batch_size or sizes[f"{kind}_batch"]
    seq = cfg.seq_len or sizes[f"{kind}_seq"]
    vocab = cfg.vocab_size or sizes["vocab"]
    arch = (cfg.clm_arch if kind == "clm" else cfg.mlm_arch) or sizes[f"{kind}_arch"]
    attn = attention_implementation(cfg.attn, str(device))
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g).to(device)
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
            vocab_size=vocab,
            mask_token_id=4,
            special_token_ids=(0, 1, 2, 3, 4),
            generator=torch.Generator(device=device).manual_seed(cfg.seed),
        )
        if kind == "mlm"
        else None
    )
    k = batch * (seq - 1) if kind == "clm" else int(masked.mask.sum())
    arms, info = {}, {}
    for name, headless, full in variants:
        torch.manual_seed(cfg.seed)
        model = build_model(
            kind,
            arch,
            vocab_size=vocab,
            max_position_embeddings=max(seq, 128),
            attn_implementation=attn,
            headless=headless,
        ).to(device)
        model.train()
        compile_module(model, cfg.compile)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        arms[name] = _train_step(model, opt, kind, ids, masked, headless, bool(full), device, bf16)
        body = backbone(model)
        d = body.get_input_embeddings().weight.shape[1]
        n_layers = getattr(body.config, "num_hidden_layers", None) or getattr(body.config, "n_layer", 1)
        n_nonemb = count_parameters(body) - body.get_input_embeddings().weight.numel()
        logit_positions = batch * seq if full else k
        info[name] = {
            "params": count_parameters(model),
            "loss_matrix_elements": k * k if headless else logit_positions * vocab,
            "predicted_speedup": flop_model(n_nonemb, n_layers, d, vocab, batch * seq, k, seq)[
                "predicted_speedup"
            ],
        }
    print(
        f"[headless-lm bench] {kind} step, {arch} B {batch} T {seq} V {vocab} K {k}: {list(arms)}", flush=True
    )
    times = _timed(arms, cfg, sizes, device)
    peaks = {name: _step_peak_gib(fn, device) for name, fn in arms.items()}
    label = "decoder" if kind == "clm" else "encoder"
    rows = []
    for name, *_ in variants[1:]:
        target_key = "clm" if kind == "clm" else f"mlm_{name.removeprefix('vanilla_')}"
        m, b = times["headless"], times[name]
        rows.append(
            comparison(
                PACKAGE,
                f"{label} step tokens/s headless / {name}, {arch} B{batch} T{seq} V{vocab} K{k}",
                "headless",
                name,
                {"headless": m, name: b},
                target=TARGETS.get(target_key) if gpu_targets else None,
                speedup=True,
                method_tokens_per_s=batch * seq / statistics.median(m),
                baseline_tokens_per_s=batch * seq / statistics.median(b),
                method_params=info["headless"]["params"],
                baseline_params=info[name]["params"],
                method_loss_matrix_elements=info["headless"]["loss_matrix_elements"],
                baseline_loss_matrix_elements=info[name]["loss_matrix_elements"],
                flop_model_speedup=info[name]["predicted_speedup"],
                method_step_peak_gib=peaks["headless"],
                baseline_step_peak_gib=peaks[name],
            )
        )
    del arms
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_loss_only(
    k: int, v: int, d: int, cfg: BenchConfig, sizes: dict, device: torch.device, bf16: bool, what: str
) -> dict:
    """Head + CE (logits K x V) vs CWT (K x K) on the same hidden states; forward + backward."""
    from lmlab.bench import comparison

    g = torch.Generator().manual_seed(cfg.seed)
    dtype = torch.bfloat16 if bf16 else torch.float32
    hidden = torch.randn(k, d, generator=g).to(device, dtype).requires_grad_(True)
    emb = (torch.randn(v, d, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    head = (torch.randn(v, d, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    ids = torch.randint(0, v, (k,), generator=g).to(device)

    def vanilla() -> None:
        hidden.grad = head.grad = None
        F.cross_entropy((hidden @ head.T).float(), ids).backward()

    def headless() -> None:
        hidden.grad = emb.grad = None
        cwt_loss(hidden, F.embedding(ids, emb)).backward()

    print(f"[headless-lm bench] {what}: K {k} V {v} D {d}", flush=True)
    arms = {"CWT": headless, "head+CE": vanilla}
    times = _timed(arms, cfg, sizes, device)
    peaks = {name: _step_peak_gib(fn, device) for name, fn in arms.items()}
    return comparison(
        PACKAGE,
        f"{what} fwd+bwd speed CWT / head+CE, K{k} V{v} D{d}",
        "CWT",
        "head+CE",
        times,
        target=None,
        speedup=True,
        method_loss_matrix_elements=k * k,
        baseline_loss_matrix_elements=k * v,
        method_step_peak_gib=peaks["CWT"],
        baseline_step_peak_gib=peaks["head+CE"],
    )


def run_bench(cfg: BenchConfig) -> dict:
    from lmlab.bench import environment, write_bench
    from lmlab.device import torch_device

    device = torch_device(cfg.device)
    preset = cfg.preset if cfg.preset != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    sizes = PRESETS[preset]
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    k, v, d = cfg.loss_k or sizes["loss_k"], cfg.loss_v or sizes["loss_v"], cfg.loss_d or sizes["loss_d"]
    gpu_targets = preset == "gpu"
    rows: list[dict] = []
    if cfg.task in ("loss", "all"):
        rows.append(bench_loss_only(k, v, d, cfg, sizes, device, bf16, "loss-only"))
    if cfg.task in ("clm", "all"):
        rows += bench_model_step(cfg, "clm", sizes, device, bf16, gpu_targets)
    if cfg.task in ("mlm", "all"):
        rows += bench_model_step(cfg, "mlm", sizes, device, bf16, gpu_targets)
    if cfg.task in ("sweep", "all"):
        rows += [
            bench_loss_only(k, vv, d, cfg, sizes, device, bf16, "vocab sweep") for vv in sizes["vocab_sweep"]
        ]
        rows += [bench_loss_only(kk, v, d, cfg, sizes, device, bf16, "K sweep") for kk in sizes["k_sweep"]]
    shapes = {
        "preset": preset,
        **{key: val for key, val in sizes.items() if key not in ("warmup", "rounds")},
        **{
            key: value
            for key in ("clm_arch", "mlm_arch", "vocab_size", "batch_size", "seq_len")
            if (value := getattr(cfg, key)) is not None
        },
        "loss_k": k,
        "loss_v": v,
        "loss_d": d,
        "warmup": sizes["warmup"] if cfg.warmup_steps is None else cfg.warmup_steps,
        "rounds": cfg.rounds or sizes["rounds"],
        "compile": cfg.compile,
        "attn": cfg.attn,
    }
    env = environment(device, "bf16 autocast" if bf16 else "fp32", shapes)
    path = write_bench(rows, env, cfg.output_dir, "bench")
    print(f"[headless-lm bench] wrote {path} and {path.with_suffix('.md')}")
    return {"rows": len(rows)}
