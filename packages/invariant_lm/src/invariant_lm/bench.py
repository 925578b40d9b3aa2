"""`invariant-lm bench`: one IRM-games update with n heads against one plain MLM update, same model shape,
batch, dtype and optimizer (AdamW, clipping at 1.0).

Baseline: a Hugging Face `AutoModelForMaskedLM` step (dense head on every token, HF loss). Method: the wrapper
with n private heads, body + one head stepped (round-robin), heads only at masked positions (`sparse on`) or on
every token (`sparse off`, the reference's cost). Each (n, sparse) setting is timed against the plain update in
interleaved rounds (`lmlab.bench.interleave`: warm-up, then plain and IRM alternating, the order rotating), so
load drift on a shared machine falls on both arms; one row per setting (`lmlab.bench.comparison`) with the
medians, min-max, the time ratio, the target, tokens/s, the FLOP-model prediction for the dense ratio (spec §7),
the extra heads' parameter + AdamW state and, on CUDA, the memory each arm's update allocates above what is
resident before it (activations, gradients; `torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import gc

import torch
from lmlab.errors import LmlabError

from invariant_lm.config import BenchConfig

PACKAGE = "invariant_lm"
# targets (GPU preset; time ratio IRM / plain): issue 13 asks <= 1.08 for sparse n = 4 (the spec's ">= 0.9x the
# plain throughput" is <= 1.11, reported beside it); the spec asks n = 1 within 5% of the plain throughput
TARGETS = {(4, "on"): "<= 1.08", (1, "on"): "<= 1.05"}
SPEC_TARGETS = {(4, "on"): "<= 1.11"}


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


def predicted_dense_ratio(cfg: BenchConfig, n: int) -> float:
    """(body + n * head) / (body + head) FLOPs per token (spec §7)."""
    h, v, t, layers = cfg.hidden_size, cfg.vocab_size, cfg.seq_len, cfg.num_layers
    body = 2 * 12 * h * h * layers + 2 * 2 * t * h * layers
    head = 2 * (h * h + h * v)
    return (body + n * head) / (body + head)


def _step_memory_mib(step, device: torch.device) -> float | None:
    """MiB one call of `step` allocates at its peak above what is allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_bench(cfg: BenchConfig) -> list[dict]:
    from lmlab.bench import comparison, environment, interleave, write_bench
    from lmlab.device import set_threads, torch_device
    from lmlab.training import compile_module
    from transformers import AutoModelForMaskedLM

    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import OptimSettings, build_optimizers, environment_update

    set_threads(cfg.threads)
    device = torch_device(cfg.device)
    if cfg.preset == "gpu" and device.type != "cuda":
        raise LmlabError("--preset gpu needs a CUDA device; use --preset cpu (or toy) on this machine")
    bf16 = cfg.precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    config = _config(cfg)
    batch = _batch(cfg, device)
    tokens = cfg.batch_size * cfg.seq_len

    def base_model():
        torch.manual_seed(cfg.seed)
        return AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").to(device).train()

    model = compile_module(base_model(), cfg.compile)
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
    shape = f"RoBERTa-base shape ({cfg.hidden_size}/{cfg.num_layers}/{cfg.vocab_size})"
    if cfg.preset == "toy":
        shape = f"toy RoBERTa ({cfg.hidden_size}/{cfg.num_layers}/{cfg.vocab_size})"
    rows = []
    for n in cfg.n_envs:
        for sparse in cfg.sparse:
            envs = [f"e{i}" for i in range(n)]
            wrapper = InvariantMLM.from_base(base_model(), envs).to(device).train()
            compile_module(wrapper.body, cfg.compile)
            opts = build_optimizers(wrapper, OptimSettings(learning_rate=1e-5), 10**6)
            counter = [0]

            def irm_step(wrapper=wrapper, opts=opts, envs=envs, sparse=sparse, counter=counter):
                env = envs[counter[0] % len(envs)]
                counter[0] += 1
                with autocast:
                    environment_update(wrapper, env, [batch], *opts, max_grad_norm=1.0, sparse=sparse == "on")

            kind = "sparse heads" if sparse == "on" else "dense heads"
            method = f"IRM-games n={n}, {kind}"
            times = interleave({method: irm_step, "plain HF MLM": plain_step}, cfg.rounds, cfg.warmup, sync)
            target = TARGETS.get((n, sparse)) if cfg.preset == "gpu" else None
            spec = SPEC_TARGETS.get((n, sparse)) if cfg.preset == "gpu" else None
            measure = f"IRM-games update (n={n}, {kind}) / plain MLM update, {shape}"
            row = comparison(PACKAGE, measure, method, "plain HF MLM", times, target)
            row.update({
                "spec_target": spec,
                "spec_met": None if spec is None else row["ratio"] <= float(spec.split()[1]),
                "tokens_per_s_method": tokens / row["method_median"],
                "tokens_per_s_baseline": tokens / row["baseline_median"],
                "predicted_dense_ratio": predicted_dense_ratio(cfg, n),
                "extra_heads_state_mib": (n * head_params - tied_head) * 16 / 2**20,  # fp32 param, grad, 2 moments
                "step_mem_mib_method": _step_memory_mib(irm_step, device),
                "step_mem_mib_baseline": _step_memory_mib(plain_step, device),
            })  # fmt: skip
            rows.append(row)
            del wrapper, opts, irm_step
            _free(device)
    shapes = {"batch": cfg.batch_size, "seq_len": cfg.seq_len, "hidden": cfg.hidden_size,
              "layers": cfg.num_layers, "vocab": cfg.vocab_size, "masked": 0.15, "preset": cfg.preset,
              "warmup": cfg.warmup, "compile": cfg.compile}  # fmt: skip
    env = environment(device, "bf16 autocast" if bf16 else "fp32", shapes)
    path = write_bench(rows, env, cfg.output_dir, "bench")
    extra = extras_table(rows)
    with path.with_suffix(".md").open("a", encoding="utf-8") as fh:
        fh.write(f"\n{extra}")
    print(f"\n{extra}[invariant-lm] bench rows in {path} and {path.with_suffix('.md')}")
    return rows


def extras_table(rows: list[dict]) -> str:
    """The measurements beside the timing table: throughput, the spec's target, the FLOP model, memory."""

    def f(x, fmt):
        return "" if x is None else format(x, fmt)

    lines = [
        "| method | tokens/s method | tokens/s plain | spec target (met) | FLOP-model dense ratio "
        "| extra heads + AdamW MiB | update MiB method | update MiB plain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        spec = "" if r["spec_target"] is None else f"{r['spec_target']} ({'yes' if r['spec_met'] else 'no'})"
        lines.append(
            f"| {r['method']} | {r['tokens_per_s_method']:.0f} | {r['tokens_per_s_baseline']:.0f} | {spec} "
            f"| {r['predicted_dense_ratio']:.2f} | {r['extra_heads_state_mib']:.0f} "
            f"| {f(r['step_mem_mib_method'], '.0f')} | {f(r['step_mem_mib_baseline'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"
