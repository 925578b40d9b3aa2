"""`camels bench`: the meta-step of the reference-equivalent mode (unroll, documents padded to max_text_len,
metric-only forwards on), unroll without padding, and the exact adjoint mode, timed in interleaved rounds
(lmlab.bench.interleave: every mode once per round, the order rotating), with the peak memory of every step;
plus online-adaptation documents/s and generation questions/s. Random-init models from configs and a fixed
synthetic batch, both built once and shared by every mode.

Peak memory is measured above the built models, read before any step: on CUDA per timed round
(`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what is allocated before the round);
on the CPU in a fresh process per mode (so no mode inherits another's heap), one value per round:
the peak resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set before the round,
with the freed heap handed back to the system (malloc_trim) before each round. Every mode also reports the
weighting-model head gradient of one dropout-free step, so the modes can be checked against each other at
the benchmark size.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import torch
from lmlab.bench import comparison, environment, interleave, write_bench
from lmlab.errors import LmlabError

SIZES = {
    "toy": {"n_embd": 32, "n_layer": 1, "n_head": 2, "vocab_size": 512},
    "tiny": {"n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 4096},
    # activations (logits) dominate, as they do at scale
    "cpu": {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 8192},
    "distilgpt2": {"n_embd": 768, "n_layer": 6, "n_head": 12, "vocab_size": 50257},
    "gpt2-large": {"n_embd": 1280, "n_layer": 36, "n_head": 20, "vocab_size": 50257},
    "gpt2-xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257},
}

# what each preset runs; every BenchConfig field left at 0 / "auto" takes the preset's value
PRESETS = {
    "toy": {  # seconds, for tests
        "device": "cpu", "size": "toy", "n_docs": 3, "doc_len": 24, "max_text_len": 32, "qa_len": 8,
        "loc_len": 32, "warmup": 1, "rounds": 3, "eval_size": "toy", "eval_docs": 2, "eval_questions": 2,
        "dtype": "float32",
    },
    "cpu": {  # under two minutes on two idle cores
        "device": "cpu", "size": "cpu", "n_docs": 6, "doc_len": 128, "max_text_len": 192, "qa_len": 32,
        "loc_len": 192, "warmup": 2, "rounds": 7, "eval_size": "tiny", "eval_docs": 8, "eval_questions": 8,
        "dtype": "float32",
    },
    "gpu": {  # issue 13's sizes: DistilGPT-2 shape, 6 documents of 1024 tokens; GPT-2 XL adaptation in bf16
        "device": "cuda", "size": "distilgpt2", "n_docs": 6, "doc_len": 1024, "max_text_len": 1024,
        "qa_len": 32, "loc_len": 1024, "warmup": 3, "rounds": 10, "eval_size": "gpt2-xl", "eval_docs": 16,
        "eval_questions": 32, "dtype": "bfloat16",
    },
}  # fmt: skip

# issue 13's targets for adjoint / unroll at the DistilGPT-2 shape on one GPU; rows of the toy and cpu presets
# carry no target (their shapes weigh parameter copies against activations differently)
GPU_TARGETS = {"time": "<= 1.2", "memory": "<= 0.35"}
MIB = 2**20
PAIRS = (("adjoint", "unroll"), ("unroll", "unroll_padded"))  # (method, baseline) rows


def _config(size: str, positions: int) -> Any:
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


class MetaStepSetup:
    """The base model, the weighting model and the batch of one benchmark, built once; `step(mode)` runs one
    meta-step of `mode` and clears the weighting model's gradients."""

    def __init__(self, opts: dict[str, Any]):
        from lmlab.training import compile_module
        from transformers import GPT2LMHeadModel

        from camels.meta import base_params
        from camels.weighting import CaMeLSWeightModel

        self.opts, self.device = opts, torch.device(opts["device"])
        torch.manual_seed(opts["seed"])
        cfg = _config(opts["size"], opts["max_text_len"])
        self.base = GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").to(self.device)
        self.base.requires_grad_(False)
        self.wm = CaMeLSWeightModel(_config(opts["size"], opts["max_text_len"])).to(self.device)
        torch.nn.init.normal_(self.wm.head[2].weight, std=0.02)  # non-zero weights, so gradients differ
        # the weighting model only: the base model's inner-loop tape needs double backward, which
        # torch.compile does not support
        compile_module(self.wm, opts["compile"])
        self.params = base_params(self.base)
        self.batch, self.loc = _batch(
            cfg.vocab_size,
            opts["n_docs"],
            opts["doc_len"],
            opts["qa_len"],
            opts["loc_len"],
            self.device,
            opts["seed"],
        )
        self.cfgs = {
            mode: _mode_cfg(mode, opts["max_text_len"], keep_last=opts["keep_last"]) for mode in opts["modes"]
        }

    def step(self, mode: str) -> None:
        from camels.meta import meta_step

        meta_step(self.wm, self.base, self.params, self.batch, self.loc, self.cfgs[mode])
        self.wm.zero_grad(set_to_none=True)

    def head_grad(self, mode: str) -> torch.Tensor:
        """The weighting-model head gradient of one dropout-free step (the modes agree to round-off)."""
        from camels.meta import meta_step

        self.wm.eval()
        cfg = _mode_cfg(
            mode, self.opts["max_text_len"], inner_dropout=False, keep_last=self.opts["keep_last"]
        )
        meta_step(self.wm, self.base, self.params, self.batch, self.loc, cfg)
        grad = torch.cat([p.grad.flatten() for p in self.wm.head.parameters()]).double().cpu()
        self.wm.zero_grad(set_to_none=True)
        self.wm.train()
        return grad


# ------------------------------------------------------------------------------------- CPU peak memory
def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LmlabError(f"/proc/self/status has no {field}; the CPU memory figures need Linux")


def _release_heap() -> None:
    """Hand the freed heap back to the system, so the next round's resident set starts from live memory."""
    gc.collect()
    # not glibc: the freed heap stays resident and the peak above it is a lower bound
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError as e:
        raise LmlabError(
            f"the CPU memory figures reset the peak resident set through /proc/self/clear_refs ({e}); run the "
            "bench on Linux, or on CUDA"
        ) from None


def cpu_memory_rounds(mode: str, opts: dict[str, Any]) -> list[float]:
    """Bytes of peak resident set above the resident set before each of `opts['rounds']` meta-steps of `mode`,
    in this process (run it in a fresh one: a process that ran another mode keeps that mode's heap). The first
    value is read before any step, right after the models are built."""
    torch.set_num_threads(opts["threads"])
    setup = MetaStepSetup(opts)
    peaks = []
    for _ in range(opts["rounds"]):
        _release_heap()
        before = _status_bytes("VmRSS")
        _reset_peak_rss()
        setup.step(mode)
        peaks.append(float(_status_bytes("VmHWM") - before))
    return peaks


def _cpu_memory(modes: list[str], opts: dict[str, Any]) -> dict[str, list[float]]:
    # a fresh process per mode, side by side (memory is per process; the timing rounds are done by now), forked
    # from a server that has imported the modules but run no step, so no process pays the imports again
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["camels.bench", "camels.meta", "camels.weighting", "transformers"])
    with ctx.Pool(len(modes), maxtasksperchild=1) as pool:
        peaks = pool.starmap(cpu_memory_rounds, [(mode, opts) for mode in modes], chunksize=1)
    return dict(zip(modes, peaks, strict=True))


# ------------------------------------------------------------------------------------- online adaptation
def adaptation_bench(
    size: str,
    n_docs: int,
    doc_len: int,
    n_questions: int,
    device: torch.device,
    dtype: torch.dtype | None,
    seed: int,
    compile_model: bool = False,
) -> dict[str, Any]:
    """Online adaptation documents/s (uniform weights, Adam, batch 1) and group-beam generation questions/s."""
    from lmlab.training import compile_module
    from transformers import GPT2LMHeadModel

    from camels.generation import generate
    from camels.losses import weighted_lm_loss

    torch.manual_seed(seed)
    cfg = _config(size, doc_len)
    with torch.device(device):  # built in place: a GPT-2 XL initialised on the CPU takes minutes
        model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa")
    if sum(p.numel() for p in model.parameters()) > 500_000_000:
        model.gradient_checkpointing_enable()
    compile_module(model, compile_model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(seed)
    docs = torch.randint(1, cfg.vocab_size, (n_docs + 2, doc_len), generator=g).to(device)
    mask = torch.ones(1, doc_len, dtype=torch.long, device=device)
    model.train()
    times = []
    for i in range(n_docs + 2):  # two warm-up documents
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
        "online_size": size,
        "online_doc_len": doc_len,
        "online_dtype": str(dtype or torch.float32).removeprefix("torch."),
        "adapt_docs_per_s": len(times) / sum(times),
        "gen_questions_per_s": n_questions / gen_s,
        "generation": "group beam 12 beams / 4 groups, 16 new tokens (no early EOS), batch 8",
    }


# ------------------------------------------------------------------------------------- the command
def resolve(cfg: Any) -> tuple[str, dict[str, Any]]:
    """The preset's name and every setting, the config's non-default values over the preset's."""
    preset = cfg.preset if cfg.preset != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    p = dict(PRESETS[preset])
    for key in ("size", "eval_size", "dtype", "device"):
        if getattr(cfg, key) != "auto":
            p[key] = getattr(cfg, key)
    for key in (
        "n_docs",
        "doc_len",
        "max_text_len",
        "qa_len",
        "loc_len",
        "rounds",
        "eval_docs",
        "eval_questions",
    ):
        if getattr(cfg, key):
            p[key] = getattr(cfg, key)
    if cfg.warmup >= 0:
        p["warmup"] = cfg.warmup
    if p["device"] == "cuda" and not torch.cuda.is_available():
        raise LmlabError(
            f"camels bench --preset {preset} runs on CUDA, which is not available here; use --preset cpu (or toy)"
        )
    modes = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    bad = sorted(set(modes) - {"unroll_padded", "unroll", "adjoint"})
    if bad or not any(m in modes and b in modes for m, b in PAIRS):
        raise LmlabError(
            "--modes takes unroll_padded, unroll and adjoint, comma-separated, with at least one pair to compare "
            f"(adjoint,unroll or unroll,unroll_padded), got {cfg.modes!r}"
        )
    p.update(
        doc_len=min(p["doc_len"], p["max_text_len"]),
        modes=modes,
        keep_last=cfg.adjoint_keep_last,
        seed=cfg.seed,
        compile=cfg.compile,
        # CPU: one thread (the machine is shared; every mode gets the same); CUDA: the process's
        threads=1 if p["device"] == "cpu" else torch.get_num_threads(),
    )
    return preset, p


def _time_modes(
    opts: dict[str, Any], cuda: bool
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, torch.Tensor]]:
    """Seconds per meta-step of every mode in interleaved rounds; on CUDA also each timed round's peak memory
    above what was allocated before any step (bytes; empty lists on the CPU); and each mode's head gradient."""
    setup = MetaStepSetup(opts)
    if cuda:
        torch.cuda.synchronize()
        models_bytes = torch.cuda.memory_allocated()  # before any step: the models and the batch
    grads = {mode: setup.head_grad(mode) for mode in opts["modes"]}  # also the first warm-up step
    memory: dict[str, list[float]] = {mode: [] for mode in opts["modes"]}

    def arm(mode: str) -> Any:
        if not cuda:
            return lambda: setup.step(mode)

        def measured() -> None:
            torch.cuda.reset_peak_memory_stats()
            setup.step(mode)
            memory[mode].append(float(torch.cuda.max_memory_allocated() - models_bytes))

        return measured

    times = interleave(
        {mode: arm(mode) for mode in opts["modes"]},
        rounds=opts["rounds"],
        warmup=opts["warmup"],
        sync=torch.cuda.synchronize if cuda else None,
    )
    memory = {mode: values[opts["warmup"] :] for mode, values in memory.items()}  # not the warm-up steps'
    return times, memory, grads


def run_bench(cfg: Any) -> dict[str, Any]:
    preset, opts = resolve(cfg)
    device = torch.device(opts["device"])
    cuda = device.type == "cuda"
    torch.set_num_threads(opts["threads"])
    modes = opts["modes"]
    print(
        f"[camels bench] preset {preset}: meta-step modes {', '.join(modes)} on {device}, {opts['warmup']} "
        f"warm-up step(s) each, then {opts['rounds']} interleaved rounds",
        flush=True,
    )
    times, memory, grads = _time_modes(opts, cuda)
    if not cuda:
        print("[camels bench] CPU peak memory: a fresh process per mode ...", flush=True)
        memory = _cpu_memory(modes, opts)
    ref = grads.get("unroll", next(iter(grads.values())))
    grad_diff = {
        mode: float((g - ref).abs().max() / ref.abs().max().clamp_min(1e-30)) for mode, g in grads.items()
    }
    shape = (
        f"{opts['size']}-shaped GPT-2 base and weighting model, {opts['n_docs']} sequential documents of "
        f"{opts['doc_len']} tokens (padded mode: {opts['max_text_len']}), locality {opts['loc_len']}"
    )
    memory_kind = (
        "peak CUDA memory above the models (max_memory_allocated), MiB, per round"
        if cuda
        else "peak RSS above the models (own process per mode, VmHWM), MiB, per round"
    )
    rows = []
    for method, baseline in PAIRS:
        if method not in modes or baseline not in modes:
            continue
        gpu_target = preset == "gpu" and baseline == "unroll"
        common = {
            "preset": preset,
            "compile": opts["compile"],
            "head_grad_rel_diff": {method: grad_diff[method], baseline: grad_diff[baseline]},
        }
        rows.append(
            comparison(
                "camels",
                f"meta-step time, s ({shape})",
                method,
                baseline,
                times,
                target=GPU_TARGETS["time"] if gpu_target else None,
                **common,
            )
        )
        rows.append(
            comparison(
                "camels",
                f"meta-step {memory_kind} ({shape})",
                method,
                baseline,
                {mode: [v / MIB for v in values] for mode, values in memory.items()},
                target=GPU_TARGETS["memory"] if gpu_target else None,
                **common,
            )
        )
    # the meta-step's models are gone: the adaptation model (GPT-2 XL on the gpu preset) gets the memory
    if cuda:
        torch.cuda.empty_cache()
    dtype = torch.bfloat16 if opts["dtype"] == "bfloat16" else None
    print(f"[camels bench] adaptation + generation ({opts['eval_size']}) ...", flush=True)
    online = adaptation_bench(
        opts["eval_size"],
        opts["eval_docs"],
        opts["doc_len"],
        opts["eval_questions"],
        device,
        dtype,
        opts["seed"],
        opts["compile"],
    )
    rows = [{**row, **online} for row in rows]
    shapes = {
        k: opts[k]
        for k in ("size", "n_docs", "doc_len", "max_text_len", "qa_len", "loc_len", "eval_size", "eval_docs")
    }
    env = environment(device, f"float32 meta-step, {opts['dtype']} adaptation/generation", shapes)
    out = Path(cfg.output_dir)
    path = write_bench(rows, env, out, "bench")
    online_line = (
        f"Online adaptation ({online['online_size']}-shaped, {online['online_doc_len']}-token documents, Adam, "
        f"{online['online_dtype']}): {online['adapt_docs_per_s']:.2f} docs/s. Generation: "
        f"{online['gen_questions_per_s']:.2f} questions/s ({online['generation']}). Head-gradient relative "
        f"difference vs unroll (one dropout-free step): "
        + ", ".join(f"{m} {d:.1e}" for m, d in grad_diff.items())
        + "\n"
    )
    with open(out / "bench.md", "a") as fh:
        fh.write("\n" + online_line)
    print(online_line, end="")
    kinds = ("time", "memory")
    return {
        "bench": str(path),
        **{f"{r['method']}/{r['baseline']} {kinds[i % 2]}": r["ratio"] for i, r in enumerate(rows)},
    }


__all__ = ["PRESETS", "adaptation_bench", "cpu_memory_rounds", "run_bench"]
