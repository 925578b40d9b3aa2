"""`invariant-lm bench`: one IRM-games update with n heads against one plain MLM update, same model shape,
batch, dtype and optimizer (AdamW, clipping at 1.0).

Baseline: a Hugging Face `AutoModelForMaskedLM` step (dense head on every token, HF loss). Ours: the wrapper
with n private heads, body + one head stepped (round-robin), heads only at masked positions (`sparse on`) or on
every token (`sparse off`, the reference's cost). Reports seconds per update, tokens/s (B*T per update), the
time ratio to the baseline, the FLOP-model prediction for the dense ratio (spec §7), and on CUDA the peak
memory (`torch.cuda.max_memory_allocated`) and its overhead next to the extra heads' parameter + AdamW state.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

import torch

from invariant_lm.config import BenchConfig


def _config(cfg: BenchConfig):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.seq_len + 2,
        type_vocab_size=1,
        pad_token_id=1,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )


def _batch(cfg: BenchConfig, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(5, cfg.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
    sel = torch.rand(ids.shape, generator=g) < 0.15
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    inputs = torch.where(sel, torch.full_like(ids, 4), ids)
    att = torch.ones_like(ids)
    return {"input_ids": inputs.to(device), "attention_mask": att.to(device), "labels": labels.to(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(step, cfg: BenchConfig, device: torch.device) -> tuple[float, float | None]:
    for _ in range(cfg.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    _sync(device)
    sec = (time.perf_counter() - t0) / cfg.steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return sec, peak


def _paired(a, b, cfg: BenchConfig, device: torch.device) -> tuple[list[float], list[float]]:
    """Per-update times of `a` and `b` run alternately (after `warmup` of each)."""
    for _ in range(cfg.warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(cfg.steps):
        for fn, out in ((a, ta), (b, tb)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t0)
    return ta, tb


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def predicted_dense_ratio(cfg: BenchConfig, n: int) -> float:
    """(body + n * head) / (body + head) FLOPs per token (spec §7)."""
    h, v, t, layers = cfg.hidden_size, cfg.vocab_size, cfg.seq_len, cfg.num_layers
    body = 2 * 12 * h * h * layers + 2 * 2 * t * h * layers
    head = 2 * (h * h + h * v)
    return (body + n * head) / (body + head)


def run_bench(cfg: BenchConfig) -> dict:
    from lmlab.device import set_threads, torch_device
    from lmlab.io import write_json
    from transformers import AutoModelForMaskedLM

    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import OptimSettings, build_optimizers, environment_update

    set_threads(cfg.threads)
    device = torch_device(cfg.device)
    cfg = cfg.resolved(device.type == "cuda")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    config = _config(cfg)
    batch = _batch(cfg, device)
    tokens = cfg.batch_size * cfg.seq_len
    rows = []

    def base_model():
        torch.manual_seed(cfg.seed)
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").to(device).train()

    # baseline: plain HF MLM step
    model = base_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def plain_step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    tied_head = sum(p.numel() for n_, p in model.named_parameters() if n_.startswith("lm_head."))
    head_params = tied_head + model.lm_head.decoder.weight.numel()  # a private head also owns a decoder
    interleave = cfg.interleave == "on" or (cfg.interleave == "auto" and device.type == "cpu")
    plain_times: list[float] = []
    base_peak = None
    if not interleave:
        base_sec, base_peak = _time(plain_step, cfg, device)
        del model, opt
        _free(device)
        print(f"[bench] plain HF MLM: {base_sec * 1000:.1f} ms/update", flush=True)

    results = []
    for n in cfg.n_envs:
        for sparse in cfg.sparse:
            envs = [f"e{i}" for i in range(n)]
            wrapper = InvariantMLM.from_base(base_model(), envs).to(device).train()
            opts = build_optimizers(wrapper, OptimSettings(learning_rate=1e-5), 10**6)
            counter = [0]

            def irm_step(wrapper=wrapper, opts=opts, envs=envs, sparse=sparse, counter=counter):
                env = envs[counter[0] % len(envs)]
                counter[0] += 1
                with autocast:
                    environment_update(wrapper, env, [batch], *opts, max_grad_norm=1.0, sparse=sparse == "on")

            if interleave:  # alternate plain and IRM updates; medians cancel the load of a shared machine
                pt, it = _paired(plain_step, irm_step, cfg, device)
                plain_times += pt
                sec, peak, ratio = statistics.median(it), None, statistics.median(it) / statistics.median(pt)
            else:
                sec, peak = _time(irm_step, cfg, device)
                ratio = sec / base_sec
            extra = (n * head_params - tied_head) * 16 / 2**20  # fp32 param + grad + 2 AdamW moments
            results.append({
                "setting": f"IRM-games n={n}", "n": n, "sparse": sparse, "sec_per_update": sec,
                "tokens_per_s": tokens / sec, "time_ratio": ratio, "peak_mem_mb": peak,
                "peak_overhead_mb": None if peak is None else peak - base_peak,
                "extra_heads_state_mb": extra, "predicted_dense_ratio": predicted_dense_ratio(cfg, n),
            })  # fmt: skip
            print(
                f"[bench] n={n} sparse={sparse}: {sec * 1000:.1f} ms/update, {ratio:.3f}x plain", flush=True
            )
            del wrapper, opts
            _free(device)
    if interleave:
        base_sec = statistics.median(plain_times)
    rows.append({"setting": "plain HF MLM", "n": 1, "sparse": "-", "sec_per_update": base_sec,
                 "tokens_per_s": tokens / base_sec, "time_ratio": 1.0, "peak_mem_mb": base_peak,
                 "predicted_dense_ratio": 1.0})  # fmt: skip
    rows += results

    meta = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "dtype": "bf16 autocast" if bf16 else "fp32",
        "model": f"RoBERTa shape: hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab {cfg.vocab_size}",
        "batch": f"{cfg.batch_size} x {cfg.seq_len}",
        "warmup": cfg.warmup,
        "steps": cfg.steps,
        "timing": "interleaved with the plain step, medians" if interleave else "sequential blocks, means",
        "threads": torch.get_num_threads(),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", {"meta": meta, "rows": rows})
    (out / "bench.md").write_text(to_markdown(meta, rows))
    print((out / "bench.md").read_text())
    print(f"[invariant-lm] bench results in {out}/bench.json and bench.md")
    return {"meta": meta, "rows": rows}


def to_markdown(meta: dict, rows: list[dict]) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [
        f"Device: {meta['device']}, {meta['dtype']}, {meta['model']}, batch {meta['batch']}, "
        f"{meta['warmup']} warm-up + {meta['steps']} timed updates ({meta['timing']}).",
        "",
        "| setting | sparse heads | ms / update | tokens/s | time vs plain | FLOP-model dense ratio | peak MiB | "
        "peak overhead MiB | extra heads + AdamW MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['sparse']} | {r['sec_per_update'] * 1000:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['time_ratio']:.3f} | {r['predicted_dense_ratio']:.2f} | {f(r['peak_mem_mb'], '.0f')} | "
            f"{f(r.get('peak_overhead_mb'), '.0f')} | {f(r.get('extra_heads_state_mb'), '.0f')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_bench(BenchConfig()), indent=1))
