"""`diito bench`: a DIITO micro-step against a standard distillation micro-step, same teacher, student, batch.

Every step goes through `distill.distill_losses` (teacher under inference_mode, stored in bf16 for bf16 arms) plus
backward, norm clipping and an AdamW step. Arms (`--modes`):
  standard          alpha_ce = alpha_mlm = alpha_cos = 0.33 (one teacher pass, one student pass): the baseline
  diito             the paper recipe (+ alpha_causal_ce 0.25), fused: base+source in ONE batched pass per model
  diito-separate    the same losses with three separate passes per model (the reference's way)
  standard-fp32, diito-fp32   the same in fp32 on CUDA (bf16 autocast otherwise on CUDA; CPU is always fp32)
  standard-compile, diito-compile   torch.compile'd teacher and student (`--compile` adds them)
Each arm has its own copies of the teacher and student (same initial weights) and its own optimizer, so arms never
share compiled graphs, dtypes or optimizer state. The arms are timed in interleaved rounds after warm-up
(`lmlab.bench.interleave`); each row compares one arm with its baseline (median and min-max of the step time, the
ratio of medians, tokens/s, on CUDA the peak memory of the arm's first step) and is printed and written by
`lmlab.bench.write_bench`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import torch
from lmlab.errors import LmlabError

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

# size, batch, seq_len, warmup, rounds, device, arms
PRESETS = {
    "toy": ("tiny", 4, 32, 1, 3, "cpu", ("standard", "diito", "diito-separate")),
    "cpu": ("small", 4, 128, 1, 5, "cpu", ("standard", "diito", "diito-separate")),
    "gpu": (
        "base",
        40,
        128,
        5,
        20,
        "cuda",
        ("standard", "diito", "diito-separate", "standard-fp32", "diito-fp32"),
    ),
}
# issue 13's target for the DIITO step / standard step, a GPU figure: held only by rows measured at the gpu preset's
# shapes and dtype (CPU ratios are reported without a target)
GPU_TARGET = "<= 1.12"

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


def make_batch(batch_size: int, seq_len: int, vocab: int, device: torch.device, seed: int) -> dict:
    """Random ids with BERT-like specials, MLM corruption and consecutive interchange positions (prop 0.3)."""
    g = torch.Generator().manual_seed(seed)
    B, T = batch_size, seq_len
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


def is_bf16(mode: str, device: torch.device) -> bool:
    return device.type == "cuda" and not mode.endswith("-fp32")


def site_pair(cfg: BenchConfig, teacher_layers: int, student_layers: int) -> tuple[int, int]:
    """The intervened teacher and student blocks (default: the middle ones, as in single_middle_layer_6)."""
    return (
        cfg.teacher_site if cfg.teacher_site >= 0 else teacher_layers // 2,
        cfg.student_site if cfg.student_site >= 0 else student_layers // 2,
    )


def make_step(cfg: BenchConfig, mode: str, teacher, student, batch, device: torch.device):
    """One arm: a micro-step (losses, backward, clipping, AdamW) on this arm's own copies of the models."""
    from lmlab.training import compile_module

    bf16 = is_bf16(mode, device)
    weights = STANDARD if mode.startswith("standard") else DIITO
    fused = mode != "diito-separate"
    teacher = copy.deepcopy(teacher).to(torch.bfloat16 if bf16 else torch.float32)
    student = copy.deepcopy(student)
    compile_module(teacher, mode.endswith("-compile"))
    compile_module(student, mode.endswith("-compile"))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    t_site, s_site = site_pair(cfg, teacher.config.num_hidden_layers, student.config.n_layers)
    t_sites, s_sites = {t_site: None}, {s_site: None}

    def step():
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = distill_losses(teacher, student, batch, weights, 2.0, t_sites, s_sites, fused=fused)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def baseline_of(mode: str) -> str:
    if mode.endswith("-fp32"):
        return "standard-fp32"
    if mode.endswith("-compile"):
        return "standard-compile"
    return "standard"


def build_arm(cfg: BenchConfig, mode: str, teacher, student, batch, device: torch.device):
    """(step, peak GB): the arm's step after one untimed first step (which allocates its optimizer state) and, on
    CUDA, the peak memory of that step above what was allocated before the arm's model copies were made: its
    teacher and student, optimizer state, gradients and activations, not what other arms hold (None on CPU)."""
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    step = make_step(cfg, mode, teacher, student, batch, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step()
    if not cuda:
        return step, None
    torch.cuda.synchronize(device)
    return step, (torch.cuda.max_memory_allocated(device) - before) / 2**30


def resolve(cfg: BenchConfig) -> tuple[BenchConfig, torch.device, str]:
    """The config with every -1/auto filled from the preset, the device, and the preset's name."""
    from lmlab.device import torch_device

    preset = cfg.preset if cfg.preset != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    size, batch, seq, warmup, rounds, device, modes = PRESETS[preset]
    if cfg.device == "auto" and device == "cuda" and not torch.cuda.is_available():
        raise LmlabError(f"--preset {preset} runs on CUDA, which is not available here; use --preset cpu")
    device = torch_device(device if cfg.device == "auto" else cfg.device)
    pick = lambda value, default: default if value in (-1, "auto") else value  # noqa: E731
    chosen = list(cfg.modes) if cfg.modes else list(modes)
    if cfg.compile:
        chosen += [m for m in ("standard-compile", "diito-compile") if m not in chosen]
    for m in chosen:
        if baseline_of(m) not in chosen:
            chosen.insert(0, baseline_of(m))
    cfg = dataclasses.replace(
        cfg,
        preset=preset,
        size=pick(cfg.size, size),
        batch_size=pick(cfg.batch_size, batch),
        seq_len=pick(cfg.seq_len, seq),
        warmup=pick(cfg.warmup, warmup),
        rounds=pick(cfg.rounds, rounds),
        modes=list(dict.fromkeys(chosen)),
    )
    return cfg, device, preset


def run_bench(cfg: BenchConfig) -> dict:
    from lmlab.bench import comparison, environment, interleave, write_bench

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg, device, preset = resolve(cfg)
    teacher, student = build_models(cfg.size, device, cfg.seed)
    batch = make_batch(cfg.batch_size, cfg.seq_len, teacher.config.vocab_size, device, cfg.seed)
    arms, memory = {}, {}
    for mode in cfg.modes:
        arms[mode], memory[mode] = build_arm(cfg, mode, teacher, student, batch, device)
    del teacher, student
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    print(
        f"[diito bench] preset {preset}: {len(arms)} arms ({', '.join(arms)}), a first step and {cfg.warmup} "
        f"warm-up step(s) each, then {cfg.rounds} interleaved rounds",
        flush=True,
    )
    times = interleave(arms, rounds=cfg.rounds, warmup=cfg.warmup, sync=sync)
    gpu_shapes = PRESETS["gpu"][:3] == (cfg.size, cfg.batch_size, cfg.seq_len) and device.type == "cuda"
    tokens = cfg.batch_size * cfg.seq_len
    (layers, hidden, _, _), s_layers, vocab, _ = SIZES[cfg.size]
    rows = []
    for mode in cfg.modes:
        base = baseline_of(mode)
        if mode == base:
            continue
        precision = "bf16 autocast" if is_bf16(mode, device) else "fp32"
        measure = f"{mode} step / {base} step, teacher {layers}x{hidden} BERT, {s_layers}-layer student, {precision}"
        held = gpu_shapes and is_bf16(mode, device) and mode != "diito-separate"
        row = comparison(
            "diito",
            measure,
            mode,
            base,
            times,
            target=GPU_TARGET if held else None,
            method_peak_memory_gb=memory[mode],
            baseline_peak_memory_gb=memory[base],
        )
        row["method_tokens_per_s"] = tokens / row["method_median"]
        row["baseline_tokens_per_s"] = tokens / row["baseline_median"]
        rows.append(row)
    shapes = {
        "teacher": f"BERT {layers} layers x {hidden}",
        "student": f"DistilBERT {s_layers} layers x {hidden}",
        "vocab": vocab,
        "batch": cfg.batch_size,
        "seq_len": cfg.seq_len,
        "sites": "teacher block {} -> student block {}".format(*site_pair(cfg, layers, s_layers)),
        "preset": preset,
    }
    dtype = "bf16 autocast (fp32 loss maths; -fp32 arms fp32)" if device.type == "cuda" else "fp32"
    write_bench(rows, environment(device, dtype, shapes), cfg.output_dir, "bench")
    return {"ratio_diito": next((r["ratio"] for r in rows if r["method"] == "diito"), None)}
