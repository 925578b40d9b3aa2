"""`demo`: a tiny end-to-end run (< 2 minutes on 2 CPU cores) on the shipped Wikipedia sample.

It runs through the real subcommands: train a BPE tokenizer on the sample, `preprocess`, pre-train vanilla and
headless decoders (and, with --mlm, encoders) for the same number of steps, `export`, `ft-gpt` the headless decoder,
score held-out last-word prediction / next-token accuracy, fine-tune a GLUE sample task, and write a table, plots
and the paper's anchor numbers beside ours. The reproduction (issue 11's controlled experiment) is `reproduce.py`;
it uses this module's tokenizer trainer, command runner and next-token scorer.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from lmlab.errors import LmlabError

from headless_lm.config import DemoConfig

PAPER = {
    "decoder (Table 3, Pythia-70m, OWT2)": {
        "vanilla": {"lambada_acc": 19.52, "lambada_ppl": 170.23},
        "headless (E^T head, no FT)": {"lambada_acc": 18.26, "lambada_ppl": 524.44},
        "headless + FT": {"lambada_acc": 22.2, "lambada_ppl": 153.5},
    },
    "encoder (Table 1, BERT-base, GLUE avg w/o RTE)": {
        "vanilla": 82.43,
        "headless 4.1B tokens": 83.29,
        "headless 8.2B tokens": 84.08,
    },
}


def corpus_documents() -> list[str]:
    """Paragraphs of the shipped Wikipedia sample (lmlab samples, see its SOURCES.md), markup removed."""
    from lmlab.data import sample_path

    docs = []
    for name in ("wikitext/wiki_00.txt", "wikitext/sample_text.txt"):
        text = sample_path(name).read_text(encoding="utf-8")
        text = re.sub(r"</?doc[^>]*>", "\n", text)
        docs += [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.split()) >= 8]
    if not docs:
        raise LmlabError("the shipped text sample is empty")
    return docs


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE tokenizer (GPT-2/Pythia style) with <|endoftext|>, <pad>, <mask> specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=4096,
    )
    fast.save_pretrained(out_dir)
    return fast


def _arch(kind: str, cfg: DemoConfig, out: Path) -> str:
    from headless_lm.modeling import ARCHITECTURES

    base = dict(ARCHITECTURES["tiny-gpt" if kind == "clm" else "tiny-bert"])
    base.update(
        {
            "hidden_size": cfg.hidden,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": max(1, cfg.hidden // 32),
            "intermediate_size": 4 * cfg.hidden,
        }
    )
    path = out / f"arch_{kind}.json"
    path.write_text(json.dumps(base, indent=2))
    return str(path)


def _cli(args: list[str]) -> None:
    from headless_lm.cli import main

    code = main(args)
    if code != 0:
        raise LmlabError(f"`headless-lm {' '.join(args[:1])}` failed with exit code {code}")


def _train_args(
    cfg: DemoConfig, out: Path, data: Path, tok: Path, arch: str, name: str, steps: int
) -> list[str]:
    return [
        "--dataset",
        str(data),
        "--hf_tokenizer",
        str(tok),
        "--hf_path",
        arch,
        "--output_dir",
        str(out / name),
        "--max_steps",
        str(steps),
        "--gpu_bs",
        str(cfg.batch_size),
        "--global_bs",
        str(cfg.batch_size),
        "--devices",
        "1",
        "--device",
        "cpu",
        "--warmup_steps",
        str(max(1, steps // 10)),
        "--logger",
        "none",
        "--progress_bar",
        "false",
        "--val_every",
        str(max(1, steps // 4)),
        "--val_batches",
        "4",
        "--ckpt_every",
        str(steps),
        "--last_every",
        str(max(1, steps // 2)),
        "--seed",
        str(cfg.seed),
        "--model_max_seq_len",
        str(max(cfg.seq_len, 128)),
        "--resume",
        "auto",
        "--overwrite",  # a rerun of the demo re-closes finished runs (resumed at their last step)
        "true",
    ]


@__import__("torch").no_grad()
def next_token_accuracy(model, rows) -> float:
    import torch

    model.eval()
    correct = total = 0
    for start in range(0, len(rows), 16):
        ids = torch.stack([rows[i] for i in range(start, min(len(rows), start + 16))])
        logits = model(input_ids=ids).logits[:, :-1]
        correct += int((logits.argmax(-1) == ids[:, 1:]).sum())
        total += ids[:, 1:].numel()
    return correct / max(1, total)


def _curve(path: Path) -> tuple[list[float], list[float], list[float]]:
    from lmlab.logging import read_jsonl

    steps, times, losses = [], [], []
    for row in read_jsonl(path):
        if "train/loss" in row and "train/elapsed_s" in row:
            steps.append(row["step"])
            times.append(row["train/elapsed_s"])
            losses.append(row["train/loss"])
    return steps, times, losses


def pipeline(cfg: DemoConfig) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headless_lm.data import PackedRows, load_packed
    from headless_lm.eval.lambada import evaluate

    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = corpus_documents()
    n_test = max(4, len(docs) // 10)
    train_docs, test_docs = docs[:-n_test], docs[-n_test:]
    tok_dir = out / "tokenizer"
    train_tokenizer(train_docs, cfg.vocab_size, tok_dir)
    (out / "train.txt").write_text("\n\n".join(train_docs) + "\n", encoding="utf-8")
    (out / "test.txt").write_text("\n\n".join(test_docs) + "\n", encoding="utf-8")
    data = out / "data.hf"
    if not data.exists():
        _cli(
            [
                "preprocess",
                "--text_files",
                str(out / "train.txt"),
                "--hf_tokenizer",
                str(tok_dir),
                "--output",
                str(data),
                "--max_seq_len",
                str(cfg.seq_len),
                "--val_fraction",
                "0.05",
                "--seed",
                str(cfg.seed),
            ]
        )
    test_data = out / "test.hf"
    if not test_data.exists():
        _cli(
            [
                "preprocess",
                "--text_files",
                str(out / "test.txt"),
                "--hf_tokenizer",
                str(tok_dir),
                "--output",
                str(test_data),
                "--max_seq_len",
                str(cfg.seq_len),
                "--seed",
                str(cfg.seed),
            ]
        )
    arch = _arch("clm", cfg, out)
    results: dict = {
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "decoder": {},
        "encoder": {},
    }
    for name, weights in (("gpt_vanilla", ("0", "1")), ("gpt_headless", ("1", "0"))):
        _cli(
            [
                "gpt",
                *_train_args(cfg, out, data, tok_dir, arch, name, cfg.steps),
                "--emb_loss_weight",
                weights[0],
                "--lm_loss_weight",
                weights[1],
                "--learning_rate",
                "1e-3",
            ]
        )
    _cli(
        [
            "ft-gpt",
            "--ckpt_path",
            str(out / "gpt_headless" / "checkpoints" / "last.ckpt"),
            *_train_args(cfg, out, data, tok_dir, arch, "gpt_headless_ft", cfg.ft_steps),
            "--learning_rate",
            "1e-3",
        ]
    )
    exports = {
        "vanilla": ("gpt_vanilla", "lm"),
        "headless (E^T head, no FT)": ("gpt_headless", "add_head"),
        "headless + FT": ("gpt_headless_ft", "lm"),
    }
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    test_rows = PackedRows(load_packed(str(test_data))[0], "packed")
    rows = [test_rows[i] for i in range(len(test_rows))]
    sentences = [s.strip() for d in test_docs for s in re.split(r"(?<=[.!?])\s+", d) if len(s.split()) >= 6]
    for label, (run, mode) in exports.items():
        folder = out / "export" / run
        _cli(
            [
                "export",
                "--model_ckpt",
                str(out / run / "checkpoints" / "last.ckpt"),
                "--mode",
                mode,
                "--output_dir",
                str(folder),
            ]
        )
        model = AutoModelForCausalLM.from_pretrained(folder, weights_only=True)
        lam = evaluate(model, tokenizer, sentences, batch_size=16)
        summary = json.loads((out / run / "results.json").read_text())
        results["decoder"][label] = {
            "next_token_acc": next_token_accuracy(model, rows),
            "last_word_acc": lam["acc"],
            "last_word_ppl": lam["ppl"],
            "n_passages": lam["n"],
            "steps": summary["global_step"],
            "train_seconds": summary.get("train/elapsed_s"),
        }
    if cfg.mlm:
        results["encoder"] = _encoders(cfg, out, data, tok_dir)
    if cfg.bench:
        if not (out / "bench.json").is_file():  # `make bench-headless_lm` writes the same (cpu preset)
            _cli(["bench", "--preset", "cpu", "--device", "cpu", "--output_dir", str(out)])
        results["bench"] = json.loads((out / "bench.json").read_text())
    results["paper"] = PAPER
    results["wall_seconds"] = time.perf_counter() - start
    _plots(out, ["gpt_vanilla", "gpt_headless"] + (["mlm_vanilla", "mlm_headless"] if cfg.mlm else []))
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(results))
    print((out / "summary.md").read_text())
    print(f"[headless-lm] results in {out}/summary.md and summary.json")
    return {"output_dir": str(out)}


def _encoders(cfg: DemoConfig, out: Path, data: Path, tok_dir: Path) -> dict:
    from lmlab.data import sample_path

    arch = _arch("mlm", cfg, out)
    res = {}
    glue_dir = out / "glue_data"
    for task, folder in (("mrpc", "MRPC"), ("stsb", "STS-B")):
        (glue_dir / folder).mkdir(parents=True, exist_ok=True)
        src = "mrpc" if task == "mrpc" else "sts-b"
        for split in ("train", "dev"):
            (glue_dir / folder / f"{split}.tsv").write_text(
                sample_path(f"glue/{src}/{split}.tsv").read_text(encoding="utf-8"), encoding="utf-8"
            )
    for name, weights in (("mlm_vanilla", ("0", "1")), ("mlm_headless", ("1", "0"))):
        _cli(
            [
                "mlm",
                *_train_args(cfg, out, data, tok_dir, arch, name, cfg.steps),
                "--max_seq_len",
                str(cfg.seq_len),
                "--emb_loss_weight",
                weights[0],
                "--mlm_loss_weight",
                weights[1],
                "--learning_rate",
                "1e-3",
            ]
        )
        folder = out / "export" / name
        _cli(
            [
                "export",
                "--model_ckpt",
                str(out / name / "checkpoints" / "last.ckpt"),
                "--mode",
                "mlm",
                "--output_dir",
                str(folder),
            ]
        )
        glue_out = out / f"glue_{name}"
        _cli(
            [
                "glue",
                "--model",
                str(folder),
                "--tasks",
                "mrpc",
                "stsb",
                "--seeds",
                "0",
                "1",
                "--epochs",
                "3",
                "--batch_size",
                "4",
                "--learning_rate",
                "1e-4",
                "--data_dir",
                str(glue_dir),
                "--output_dir",
                str(glue_out),
                "--overwrite",
                "true",
                "--device",
                "cpu",
            ]
        )
        summary = json.loads((out / name / "results.json").read_text())
        glue = json.loads((glue_out / "results.json").read_text())
        res[name] = {
            "val_loss": summary.get("val/loss"),
            "val_accuracy": summary.get("val/accuracy"),
            "glue_sample_avg": glue["average"],
            **{f"glue_{t}": v["mean"] for t, v in glue["tasks"].items()},
            "train_seconds": summary.get("train/elapsed_s"),
        }
    return res


def _plots(out: Path, runs: list[str]) -> None:
    """Train loss against wall time and against steps, decoders and encoders in separate figures. Headless
    (K-way CWT) and vanilla (V-way CE) losses are different quantities: compare their shapes and times."""
    from lmlab.plots import plot_curves

    for family in ("gpt", "mlm"):
        curves = {run: _curve(out / run / "metrics.jsonl") for run in runs if run.startswith(family)}
        curves = {run: c for run, c in curves.items() if c[0]}
        if not curves:
            continue
        losses = {run: c[2] for run, c in curves.items()}
        plot_curves(
            {r: c[1] for r, c in curves.items()},
            losses,
            out / f"loss_vs_time_{family}.png",
            xlabel="training seconds",
            ylabel="train loss (CWT for headless, CE for vanilla)",
            title=f"{family}: loss vs time",
        )
        plot_curves(
            {r: c[0] for r, c in curves.items()},
            losses,
            out / f"loss_vs_step_{family}.png",
            xlabel="step",
            ylabel="train loss (CWT for headless, CE for vanilla)",
            title=f"{family}: loss vs step",
        )


def summary_markdown(res: dict) -> str:
    lines = ["# headless_lm reproduction (scaled down, CPU)", ""]
    lines += [
        "## Decoders (ours: tiny GPT-NeoX on the shipped Wikipedia sample)",
        "",
        "| model | steps | next-token acc | last-word acc | last-word ppl | train s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in res["decoder"].items():
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else ""
        ppl = f"{r['last_word_ppl']:.1f}" if math.isfinite(r["last_word_ppl"]) else "inf"
        lines.append(
            f"| {label} | {r['steps']} | {r['next_token_acc']:.3f} | {r['last_word_acc']:.3f} | {ppl} | {secs} |"
        )
    lines += [
        "",
        "Paper (Table 3, Pythia-70m on OWT2, LAMBADA): vanilla 19.52% / ppl 170.23; headless with E^T head "
        "18.26% / 524.44; headless + FT 22.2% / 153.5.",
        "",
    ]
    if res.get("encoder"):
        lines += [
            "## Encoders (ours: tiny BERT, GLUE sample tasks MRPC + STS-B, 2 seeds)",
            "",
            "| model | val loss | val acc | GLUE-sample avg | train s |",
            "|---|---|---|---|---|",
        ]
        for name, r in res["encoder"].items():
            vl = f"{r['val_loss']:.3f}" if r.get("val_loss") is not None else ""
            va = f"{r['val_accuracy']:.3f}" if r.get("val_accuracy") is not None else ""
            secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else ""
            lines.append(f"| {name} | {vl} | {va} | {r['glue_sample_avg']:.3f} | {secs} |")
        lines += [
            "",
            "Paper (Table 1, BERT-base, GLUE dev avg without RTE): vanilla 82.43, headless 83.29 (same "
            "tokens, 45% of the GPU hours), headless 84.08 (8.2B tokens). The validation loss of a headless "
            "and a vanilla model are different losses (K-way CWT vs V-way CE) and not comparable.",
            "",
        ]
    if res.get("bench"):
        lines += ["## CPU benchmark", ""]
        for r in res["bench"]:
            lines.append(f"- {r['measure']}: {r['ratio']:.2f}x (median of {r['rounds']} interleaved rounds)")
        lines.append("")
    lines.append(f"Total wall time: {res['wall_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def run_demo(cfg: DemoConfig) -> dict:
    return pipeline(cfg)
