"""`camels demo`: the whole pipeline at tiny scale, offline, through the same CLI subcommands a user runs
(make-synthetic → qa-pretrain → meta-train → eval with lr sweeps). The reproduction is `camels.reproduce`.

Scaled-down choices (documented in the README): a tiny GPT-2 (2 layers, 64 wide) with a BPE tokenizer trained
on the synthetic corpus plus the SQuAD sample, the QA-tuned tiny model as the weighting model's encoder (no
LM-pretrained tiny model exists offline), max_text_len 128 (the loss denominator, as 1024 is for the paper's
documents), larger inner/outer learning rates so a few hundred meta-steps move the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from lmlab.errors import LmlabError
from lmlab.io import is_done, write_results

METHODS = {
    "uniform": [],
    "ssm": ["ssm_spacy_model=rule_based"],
    "TFIDF": ["min_threshold=0.05"],
    "CaMeLS": [],
}
# Spec §10 (StreamingQA, DistilGPT-2 base, EM/F1 ×100 as re-reported by the MAC follow-up; unverified).
PAPER = {"uniform": (1.6, 3.8), "ssm": (1.4, 4.7), "TFIDF": (None, None), "CaMeLS": (1.6, 5.8)}


def _cli(args: list[str]) -> None:
    from camels.cli import main

    code = main(args)
    if code != 0:
        raise LmlabError(f"`camels {' '.join(args[:1])}` failed with exit code {code}")


def build_tiny_base(out: Path, texts: list[str], seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """A random tiny GPT-2 and a byte-level BPE tokenizer trained on `texts`, as a save_pretrained folder."""
    from lmlab.testing import train_bpe_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    if (out / "config.json").is_file():
        return out
    tok = train_bpe_tokenizer(texts, vocab_size=1200, style="gpt2", model_max_length=512)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=256,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _corpus(data: Path) -> list[str]:
    from lmlab.data import sample_path

    from camels.data import read_table

    texts: list[str] = []
    for name in ("qa_train", "train", "val", "test", "owt_train"):
        frame = read_table(data / f"{name}.csv")
        for col in ("text", "question", "answers", "raw_text"):
            if col in frame.columns:
                texts.extend(map(str, frame[col]))
    for sample in ("squad/sample.json", "squad/dev-v2.0-sample.json"):
        frame = read_table(sample_path(sample))
        texts.extend(map(str, frame["context"]))
        texts.extend(map(str, frame["question"]))
    return texts


def _squad_table(out: Path) -> Path:
    """The repo's real SQuAD samples (flat and nested) as one flat CSV."""
    import pandas as pd
    from lmlab.data import sample_path

    from camels.data import check_columns, gold_answer, read_table

    rows = []
    for sample in ("squad/sample.json", "squad/dev-v2.0-sample.json"):
        frame = check_columns("squad", read_table(sample_path(sample)), sample)
        for _, r in frame.iterrows():
            rows.append({"text": r["context"], "question": r["question"], "answers": gold_answer("squad", r)})
    path = out / "squad_sample_stream.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def run_pipeline(out: Path, seed: int, sizes: dict[str, Any]) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from camels.data import make_synthetic

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = out / "data"
    if not (data / "test.csv").is_file():
        make_synthetic(data, seed, n_qa=sizes["n_qa"], n_meta=sizes["n_meta"], n_test=sizes["n_test"])
    base = build_tiny_base(out / "tiny_base", _corpus(data), seed)
    common = ["--dataset", "synthetic", "--seed", str(seed), "--progress_bar", "false", "--logger", "none"]
    qa_dir = out / "qa_pretrain"
    if not is_done(qa_dir):
        _cli(
            [
                "qa-pretrain",
                *common,
                "--model",
                str(base),
                "--train_path",
                str(data / "qa_train.csv"),
                "--val_path",
                str(data / "qa_val.csv"),
                "--output_dir",
                str(qa_dir),
                "--lr",
                str(sizes["qa_lr"]),
                "--lt_batch_size",
                "16",
                "--accumulate_grad_batches",
                "1",
                "--max_steps",
                str(sizes["qa_steps"]),
                "--val_steps",
                str(sizes["qa_val_steps"]),
                "--val_max_pairs",
                "64",
                "--checkpoint_every_n_steps",
                "100000",
            ]
        )
    qa_model = qa_dir / "model"
    meta_dir = out / "meta_train"
    if not is_done(meta_dir):
        _cli(
            [
                "meta-train",
                *common,
                "--base_model",
                str(qa_model),
                "--pretrained_model",
                str(qa_model),
                "--train_path",
                str(data / "train.csv"),
                "--val_path",
                str(data / "val.csv"),
                "--loc_train_path",
                str(data / "owt_train.csv"),
                "--loc_val_path",
                str(data / "owt_val.csv"),
                "--output_dir",
                str(meta_dir),
                "--max_steps",
                str(sizes["meta_steps"]),
                "--max_text_len",
                "128",
                "--inner_lr",
                str(sizes["inner_lr"]),
                "--outer_lr",
                str(sizes["outer_lr"]),
                "--val_steps",
                str(sizes["meta_val_steps"]),
                "--val_max_batches",
                "8",
                "--meta_grad_mode",
                "adjoint",
                "--checkpoint_every_n_steps",
                "100000",
            ]
        )
    weights = meta_dir / "model"
    streams = {"synthetic": (data / "val.csv", data / "test.csv"), "squad_sample": (None, _squad_table(out))}
    rows = []
    for stream_name, (val_path, test_path) in streams.items():
        for method, extra in METHODS.items():
            method_args = [
                "--weight_model",
                method,
                *extra,
                *(["--weight_model_path", str(weights)] if method == "CaMeLS" else []),
            ]
            gen = [
                "--num_beams",
                str(sizes["num_beams"]),
                "--num_beam_groups",
                str(sizes["num_beam_groups"]),
                "--max_text_len",
                "128",
                "--progress_bar",
                "false",
                "--generation_batch_size",
                "8",
                "--tfidf_path",
                str(data / "all.csv"),
            ]
            base_args = [
                "eval",
                "--dataset",
                "synthetic",
                "--base_model",
                str(qa_model),
                "--seed",
                str(seed),
                *gen,
                *method_args,
            ]
            best_lr = sizes["lrs"][0]
            if val_path is not None and len(sizes["lrs"]) > 1:
                sweep_dir = out / "sweeps" / f"{stream_name}_{method}"
                if not (sweep_dir / "sweep.json").is_file():
                    _cli(
                        [
                            *base_args,
                            "--test_path",
                            str(val_path),
                            "--downsample_to",
                            str(sizes["val_docs"]),
                            "--output_dir",
                            str(sweep_dir),
                            "--overwrite",
                            "true",
                            "-m",
                            "lr=" + ",".join(map(str, sizes["lrs"])),
                        ]
                    )
                sweep = _read(sweep_dir / "sweep.json")
                best = max(sweep, key=lambda r: (r.get("avg_f1", 0.0), r.get("em", 0.0)))
                best_lr = float(best["lr"])
            run_dir = out / "runs" / f"{stream_name}_{method}"
            if not (run_dir / "results.json").is_file():
                _cli(
                    [
                        *base_args,
                        "--test_path",
                        str(test_path),
                        "--lr",
                        str(best_lr),
                        "--output_dir",
                        str(run_dir),
                        "--overwrite",
                        "true",
                    ]
                )
            r = _read(run_dir / "results.json")
            paper = PAPER[method]
            rows.append(
                {
                    "stream": stream_name,
                    "method": method,
                    "best_lr": best_lr,
                    "n_questions": r["n"],
                    "em_prefix": 100 * r["em"],
                    "em_strict": 100 * r["em_strict"],
                    "f1": 100 * r["avg_f1"],
                    "paper_em": paper[0],
                    "paper_f1": paper[1],
                }
            )
    write_results(rows, out, name="results")
    _weights_picture(out, weights, qa_model, data / "test.csv")
    _report(out, rows, time.time() - t0)
    return {"rows": rows, "seconds": time.time() - t0}


def _weights_picture(out: Path, weights: Path, tok_dir: Path, test_path: Path) -> None:
    from camels.data import build_stream, collate_docs, read_table
    from camels.models import load_tokenizer
    from camels.viz import token_weight_pairs, write_weight_views
    from camels.weighting import CaMeLSWeightModel

    tok = load_tokenizer(str(tok_dir))
    model = CaMeLSWeightModel.from_checkpoint(weights).eval()
    docs = build_stream("synthetic", read_table(test_path), 3, 0).docs
    batch = collate_docs(tok, docs, 128)
    with torch.no_grad():
        w = model(batch["input_ids"], batch["attention_mask"])
    write_weight_views(
        token_weight_pairs(tok, batch["input_ids"], batch["attention_mask"], w),
        out / "token_weights",
        "CaMeLS weights on synthetic test documents",
    )


def _report(out: Path, rows: list[dict[str, Any]], seconds: float) -> None:
    lines = [
        "# CaMeLS scaled-down reproduction",
        "",
        f"Tiny GPT-2 base, CPU, {seconds / 60:.1f} min. EM = the reference's prefix match; strict = SQuAD EM. Scores ×100.",
        "",
    ]
    lines.append(
        "| stream | method | best lr | questions | EM (prefix) | EM (strict) | F1 | paper EM | paper F1 |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(
            f"| {r['stream']} | {r['method']} | {r['best_lr']:g} | {r['n_questions']} | {r['em_prefix']:.1f} | {r['em_strict']:.1f} | {r['f1']:.1f} | {fmt(r['paper_em'])} | {fmt(r['paper_f1'])} |"
        )
    lines += [
        "",
        "Paper numbers: StreamingQA, DistilGPT-2 base (spec §10, re-reported by the MAC follow-up; unverified). They are a different scale and dataset; compare the ordering only.",
        "",
        "Token weights: token_weights.html / token_weights.png.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


DEMO = {
    "n_qa": 150,
    "n_meta": 48,
    "n_test": 8,
    "qa_steps": 60,
    "qa_val_steps": 1000,
    "qa_lr": 3e-3,
    "meta_steps": 3,
    "meta_val_steps": 1000,
    "inner_lr": 0.05,
    "outer_lr": 1e-3,
    "lrs": [1e-3],
    "val_docs": 8,
    "num_beams": 4,
    "num_beam_groups": 2,
}


def run_demo(cfg: Any) -> dict[str, Any]:
    result = run_pipeline(Path(cfg.output_dir), cfg.seed, DEMO)
    print(f"[camels demo] results in {cfg.output_dir} (report.md, results.csv, token_weights.html)")
    return {"seconds": result["seconds"]}
