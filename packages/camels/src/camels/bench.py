"""`camels bench`: seconds per meta-step and peak memory for the reference-equivalent mode (unroll, documents
padded to max_text_len, metric-only forwards on), unroll without padding, and the exact adjoint mode; plus
online-adaptation documents/s and generation questions/s. Random-init models from configs, a fixed synthetic
batch, warm-up then the median of timed steps.

Peak memory: `torch.cuda.max_memory_allocated` on CUDA; on the CPU each mode runs in its own spawned process
and reports its peak resident set size above the process's size after building the models (ru_maxrss).
Every mode also reports the weighting-model head gradient of one dropout-free step, so the modes can be
checked against each other at the benchmark size.
"""

from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lmlab.device import torch_device
from lmlab.io import write_json

SIZES = {
    "tiny": {"n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 4096},
    "cpu": {
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "vocab_size": 8192,
    },  # activations (logits) dominate, like at scale
    "distilgpt2": {"n_embd": 768, "n_layer": 6, "n_head": 12, "vocab_size": 50257},
    "gpt2-large": {"n_embd": 1280, "n_layer": 36, "n_head": 20, "vocab_size": 50257},
    "gpt2-xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257},
}


def _config(size: str, positions: int, attn: str = "eager") -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_positions=max(positions, 1024), bos_token_id=0, eos_token_id=0, **SIZES[size])


def _batch(
    vocab: int, n_docs: int, doc_len: int, qa_len: int, loc_len: int, device: torch.device, seed: int
) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    docs = torch.randint(1, vocab, (n_docs, doc_len), generator=g)
    qa = torch.randint(1, vocab, (n_docs, qa_len), generator=g)
    labels = qa.clone()
    labels[:, : qa_len * 3 // 4] = -100
    batch = {
        "doc_ids": docs,
        "doc_mask": torch.ones_like(docs),
        "qa_ids": qa,
        "qa_mask": torch.ones_like(qa),
        "qa_labels": labels,
    }
    loc = torch.randint(1, vocab, (1, loc_len), generator=g)
    return {k: v.to(device) for k, v in batch.items()}, {
        "input_ids": loc.to(device),
        "attention_mask": torch.ones_like(loc).to(device),
    }


def _mode_cfg(mode: str, max_text_len: int, inner_dropout: bool = True, keep_last: int = 1) -> Any:
    from camels.meta import MetaConfig

    if mode == "unroll_padded":
        return MetaConfig(
            meta_grad_mode="unroll",
            pad_to_max=True,
            log_metrics="full",
            max_text_len=max_text_len,
            inner_dropout=inner_dropout,
        )
    return MetaConfig(
        meta_grad_mode=mode,
        max_text_len=max_text_len,
        inner_dropout=inner_dropout,
        adjoint_keep_last=keep_last,
    )


def _rss_bytes() -> int:
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return _rss_bytes()


def meta_step_bench(mode: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Time `opts['steps']` meta-steps of `mode` after `opts['warmup']`; return times, memory and a gradient."""
    from camels.meta import base_params, meta_step
    from camels.weighting import CaMeLSWeightModel

    torch.set_num_threads(opts.get("threads") or torch.get_num_threads())
    device = torch.device(opts["device"])
    torch.manual_seed(opts["seed"])
    from transformers import GPT2LMHeadModel

    cfg_model = _config(opts["size"], opts["max_text_len"])
    base = GPT2LMHeadModel._from_config(cfg_model, attn_implementation="eager").to(device)
    base.requires_grad_(False)
    wm = CaMeLSWeightModel(_config(opts["size"], opts["max_text_len"])).to(device)
    batch, loc = _batch(
        cfg_model.vocab_size,
        opts["n_docs"],
        opts["doc_len"],
        opts["qa_len"],
        opts["loc_len"],
        device,
        opts["seed"],
    )
    # a dropout-free step for the cross-mode gradient check
    wm.eval()
    torch.nn.init.normal_(wm.head[2].weight, std=0.02)
    meta_step(
        wm,
        base,
        base_params(base),
        batch,
        loc,
        _mode_cfg(mode, opts["max_text_len"], inner_dropout=False, keep_last=opts["keep_last"]),
    )
    head_grad = torch.cat([p.grad.flatten() for p in wm.head.parameters()]).double().cpu()
    wm.zero_grad(set_to_none=True)
    wm.train()
    cfg = _mode_cfg(mode, opts["max_text_len"], keep_last=opts["keep_last"])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _current_rss()
    times = []
    for i in range(opts["warmup"] + opts["steps"]):
        t = time.perf_counter()
        meta_step(wm, base, base_params(base), batch, loc, cfg)
        wm.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= opts["warmup"]:
            times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_bytes()
    return {
        "mode": mode,
        "s_per_meta_step": statistics.median(times),
        "times": times,
        "peak_bytes": peak,
        "peak_above_models_bytes": peak - before,
        "head_grad": head_grad.tolist(),
    }


def _run_isolated(mode: str, opts: dict[str, Any]) -> dict[str, Any]:
    if opts["device"] == "cuda":
        try:
            return meta_step_bench(mode, opts)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return {
                "mode": mode,
                "oom": True,
                "s_per_meta_step": float("nan"),
                "peak_bytes": -1,
                "peak_above_models_bytes": -1,
                "head_grad": [],
            }
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(meta_step_bench, (mode, opts))


def adaptation_bench(
    size: str,
    n_docs: int,
    doc_len: int,
    n_questions: int,
    device: torch.device,
    dtype: torch.dtype | None,
    seed: int,
) -> dict[str, Any]:
    """Online adaptation documents/s (uniform weights, Adam, batch 1) and group-beam generation questions/s."""
    from transformers import GPT2LMHeadModel

    from camels.generation import generate
    from camels.losses import weighted_lm_loss

    torch.manual_seed(seed)
    cfg = _config(size, doc_len)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").to(device)
    if sum(p.numel() for p in model.parameters()) > 500_000_000:
        model.gradient_checkpointing_enable()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(seed)
    docs = torch.randint(1, cfg.vocab_size, (n_docs + 2, doc_len), generator=g).to(device)
    mask = torch.ones(1, doc_len, dtype=torch.long, device=device)
    model.train()
    times = []
    for i in range(n_docs + 2):
        t = time.perf_counter()
        ids = docs[i : i + 1]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = weighted_lm_loss(logits, ids, mask, mask.float(), denom=1023.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 750.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    del opt
    model.eval()
    if dtype is not None:
        model.to(dtype)
    q = torch.randint(1, cfg.vocab_size, (n_questions, 16), generator=g).to(device)
    qmask = torch.ones_like(q)
    generate(model, q[:2], qmask[:2], max_new_tokens=2)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, n_questions, 8):
        generate(
            model,
            q[i : i + 8],
            qmask[i : i + 8],
            num_beams=12,
            num_beam_groups=4,
            diversity_penalty=10.0,
            max_new_tokens=16,
            eos_token_id=-1,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t
    return {
        "size": size,
        "doc_len": doc_len,
        "adapt_docs_per_s": len(times) / sum(times),
        "gen_questions_per_s": n_questions / gen_s,
        "generation": "group beam 12 beams / 4 groups, 16 new tokens (no early EOS), batch 8",
    }


def run_bench(cfg: Any) -> dict[str, Any]:
    device = torch_device(cfg.device)
    cuda = device.type == "cuda"
    size = cfg.size if cfg.size != "auto" else ("distilgpt2" if cuda else "cpu")
    max_text_len = cfg.max_text_len or (1024 if cuda else 384)
    doc_len = cfg.doc_len or (1024 if cuda else 256)
    opts = {
        "device": device.type,
        "size": size,
        "max_text_len": max_text_len,
        "doc_len": min(doc_len, max_text_len),
        "n_docs": cfg.n_docs,
        "qa_len": cfg.qa_len,
        "loc_len": cfg.loc_len or max_text_len,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "seed": cfg.seed,
        "keep_last": cfg.adjoint_keep_last,
        "threads": torch.get_num_threads() if cuda else 1,  # CPU: one thread per process (shared machines)
    }
    results = {}
    for mode in [m.strip() for m in cfg.modes.split(",") if m.strip()]:
        print(f"[camels bench] meta-step mode {mode} ...", flush=True)
        results[mode] = _run_isolated(mode, opts)
    ref = results.get("unroll") or next(iter(results.values()))
    ref_grad = torch.tensor(ref["head_grad"])
    for r in results.values():
        g = torch.tensor(r.pop("head_grad"))
        r["head_grad_rel_diff_vs_unroll"] = float(
            (g - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-30)
        )
    ratios = {}
    if "adjoint" in results and "unroll" in results:
        ratios["adjoint_vs_unroll_time"] = (
            results["adjoint"]["s_per_meta_step"] / results["unroll"]["s_per_meta_step"]
        )
        ratios["adjoint_vs_unroll_peak_above_models"] = results["adjoint"]["peak_above_models_bytes"] / max(
            1, results["unroll"]["peak_above_models_bytes"]
        )
    if "unroll_padded" in results and "unroll" in results:
        ratios["unroll_vs_padded_time"] = (
            results["unroll"]["s_per_meta_step"] / results["unroll_padded"]["s_per_meta_step"]
        )
        ratios["unroll_vs_padded_peak_above_models"] = results["unroll"]["peak_above_models_bytes"] / max(
            1, results["unroll_padded"]["peak_above_models_bytes"]
        )
    if not cuda:
        torch.set_num_threads(1)
    eval_size = cfg.eval_size if cfg.eval_size != "auto" else ("gpt2-xl" if cuda else "tiny")
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    print(f"[camels bench] adaptation + generation ({eval_size}) ...", flush=True)
    online = adaptation_bench(
        eval_size,
        cfg.eval_docs or (16 if cuda else 8),
        doc_len,
        cfg.eval_questions or (32 if cuda else 8),
        device,
        dtype,
        cfg.seed,
    )
    report = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "sizes": opts,
        "meta_step": results,
        "ratios": ratios,
        "online": online,
        "adapt_dtype": cfg.dtype,
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", report)
    (out / "bench.md").write_text(_markdown(report))
    print(_markdown(report))
    return {k: v for k, v in ratios.items()}


def _markdown(r: dict[str, Any]) -> str:
    s = r["sizes"]
    mem = "peak CUDA memory" if r["gpu"] else "peak RSS above the built models (own process)"
    lines = [
        f"# camels bench ({r['device']}{', ' + r['gpu'] if r['gpu'] else ''}, torch {r['torch']})",
        "",
        f"Meta-step: base and weighting model `{s['size']}`-shaped GPT-2, {s['n_docs']} sequential inner documents of {s['doc_len']} tokens, max_text_len {s['max_text_len']}, {s['n_docs']} QA of {s['qa_len']} tokens, 1 locality doc of {s['loc_len']} tokens; median of {s['steps']} steps after {s['warmup']} warm-up; float32.",
        "",
        f"| mode | s / meta-step | {mem} (MiB) | head-grad rel. diff vs unroll (no dropout) |",
        "|---|---|---|---|",
    ]
    for mode, m in r["meta_step"].items():
        peak = m["peak_bytes"] if r["gpu"] else m["peak_above_models_bytes"]
        lines.append(
            f"| {mode} | {m['s_per_meta_step']:.4f} | {peak / 2**20:.1f} | {m['head_grad_rel_diff_vs_unroll']:.2e} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["ratios"].items()]
    o = r["online"]
    lines += [
        "",
        f"Online adaptation ({o['size']}-shaped, {o['doc_len']}-token documents, Adam, {r['adapt_dtype']}): {o['adapt_docs_per_s']:.2f} docs/s. Generation: {o['gen_questions_per_s']:.2f} questions/s ({o['generation']}).",
        "",
    ]
    return "\n".join(lines)
