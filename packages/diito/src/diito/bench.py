"""`diito bench`: a DIITO micro-step against a standard distillation micro-step, same teacher, student, batch.

Both steps go through `distill.distill_losses` (teacher under inference_mode, stored in bf16 for bf16 modes) plus
backward and an AdamW step. Modes:
  standard          alpha_ce = alpha_mlm = alpha_cos = 0.33 (one teacher pass, one student pass)
  diito             the paper recipe (+ alpha_causal_ce 0.25), fused: base+source in ONE batched pass per model
  diito-separate    the same losses with three separate passes per model (the reference's way)
each in bf16 autocast (CUDA) and fp32 (suffix -fp32); `--compile` adds torch.compile'd students.
Reports median step time, tokens/s (non-pad base tokens, and base+source), peak memory, ratio to standard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from diito.config import BenchConfig
from diito.distill import LossWeights, distill_losses
from diito.masking import mlm_mask, token_weights
from diito.positions import sample_positions

SIZES = {
    # teacher (layers, hidden, heads, intermediate), student layers, vocab, max positions
    "base": ((12, 768, 12, 3072), 6, 30522, 512),
    "small": ((12, 256, 4, 1024), 6, 8000, 512),
    "tiny": ((4, 64, 4, 128), 2, 1000, 512),
}

STANDARD = LossWeights(alpha_ce=0.33, alpha_mlm=0.33, alpha_cos=0.33, alpha_clm=0.0)
DIITO = LossWeights(alpha_ce=0.25, alpha_mlm=0.25, alpha_cos=0.25, alpha_clm=0.0, alpha_causal_ce=0.25)


def build_models(size: str, device: torch.device, seed: int = 0):
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    (layers, hidden, heads, inter), s_layers, vocab, pos = SIZES[size]
    torch.manual_seed(seed)
    teacher = BertForMaskedLM(
        BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=pos,
        )
    )
    student = DistilBertForMaskedLM(
        DistilBertConfig(
            vocab_size=vocab,
            dim=hidden,
            n_layers=s_layers,
            n_heads=heads,
            hidden_dim=inter,
            max_position_embeddings=pos,
        )
    )
    return teacher.to(device).eval(), student.to(device).train()


def make_batch(cfg: BenchConfig, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random ids with BERT-like specials, MLM corruption and consecutive interchange positions (prop 0.3)."""
    g = torch.Generator().manual_seed(seed)
    B, T = cfg.batch_size, cfg.seq_len
    lengths = torch.full((B,), T)
    ids = torch.randint(5, vocab, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    src = torch.randint(5, vocab, (B, T), generator=g)
    src[:, 0], src[:, -1] = 1, 2
    w = token_weights(torch.randint(1, 1000, (vocab,), generator=g), [0, 1, 2, 3, 4])
    base, labels, selected = mlm_mask(ids, lengths, w, 3, vocab, generator=g)
    src, _, _ = mlm_mask(src, lengths, w, 3, vocab, generator=g)
    P, Ps = sample_positions(lengths, lengths, T, 0.3, consecutive_only=True, generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    batch = dict(
        base_ids=base,
        src_ids=src,
        base_mask=mask,
        src_mask=mask,
        labels=labels,
        selected=selected,
        P=P,
        Ps=Ps,
    )
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def time_mode(cfg: BenchConfig, mode: str, teacher, student, batch, device: torch.device) -> dict:
    bf16 = not mode.endswith("-fp32") and device.type == "cuda"
    weights = STANDARD if mode.startswith("standard") else DIITO
    fused = "separate" not in mode
    teacher.to(torch.bfloat16 if bf16 else torch.float32)
    model = torch.compile(student) if "compile" in mode else student
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    t_site = cfg.teacher_site if cfg.teacher_site >= 0 else teacher.config.num_hidden_layers // 2
    s_site = cfg.student_site if cfg.student_site >= 0 else student.config.n_layers // 2
    t_sites, s_sites = {t_site: None}, {s_site: None}

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = distill_losses(teacher, model, batch, weights, 2.0, t_sites, s_sites, fused=fused)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tokens = int(batch["base_mask"].sum())
    row = {
        "mode": mode,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "precision": "bf16-autocast" if bf16 else "fp32",
        "size": cfg.size,
        "batch_size": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "median_step_s": med,
        "tokens_per_s": tokens / med,
        "tokens_per_s_base_plus_source": (tokens if weights is STANDARD else 2 * tokens) / med,
        "peak_memory_gb": (torch.cuda.max_memory_allocated() / 2**30) if device.type == "cuda" else None,
    }
    print(f"[diito bench] {row}")
    return row


def run_bench(cfg: BenchConfig) -> dict:
    from lmlab.device import torch_device
    from lmlab.io import write_json

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch_device(cfg.device)
    cuda = device.type == "cuda"
    cfg = dataclasses.replace(
        cfg,
        size=cfg.size if cfg.size != "auto" else ("base" if cuda else "small"),
        batch_size=cfg.batch_size if cfg.batch_size > 0 else (40 if cuda else 8),
        steps=cfg.steps if cfg.steps > 0 else (20 if cuda else 5),
        warmup=cfg.warmup if cuda else min(cfg.warmup, 2),
    )
    modes = (
        list(cfg.modes)
        if cfg.modes
        else (
            ["standard", "diito", "diito-separate", "standard-fp32", "diito-fp32"]
            if device.type == "cuda"
            else ["standard", "diito", "diito-separate"]
        )
    )
    if cfg.compile:
        modes += ["standard-compile", "diito-compile"]
    teacher, student = build_models(cfg.size, device, cfg.seed)
    batch = make_batch(cfg, teacher.config.vocab_size, device, cfg.seed)
    rows = [time_mode(cfg, m, teacher, student, batch, device) for m in modes]
    by_mode = {r["mode"]: r for r in rows}
    for r in rows:
        base_mode = (
            "standard-fp32" if r["mode"].endswith("-fp32") and "standard-fp32" in by_mode else "standard"
        )
        if base_mode in by_mode:
            r["ratio_to_standard"] = r["median_step_s"] / by_mode[base_mode]["median_step_s"]
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", rows)
    lines = [
        "| mode | device | precision | batch x T | step (ms) | tokens/s | ratio to standard | peak mem (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_memory_gb']:.2f}" if r["peak_memory_gb"] is not None else "-"
        lines.append(
            f"| {r['mode']} | {r['device']} | {r['precision']} | {r['batch_size']} x {r['seq_len']} | {1000 * r['median_step_s']:.1f} |"
            f" {r['tokens_per_s']:.0f} | {r.get('ratio_to_standard', float('nan')):.2f} | {mem} |"
        )
    (out / "bench.md").write_text(f"size: {cfg.size}\n\n" + "\n".join(lines) + "\n")
    print(f"[diito bench] results in {out / 'bench.json'} and {out / 'bench.md'}")
    return {"ratio_diito": by_mode.get("diito", {}).get("ratio_to_standard")}
