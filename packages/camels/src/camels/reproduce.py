"""`camels reproduce`: a small controlled experiment that can show CaMeLS's effect on CPU (issue 11).

Design (README, "Reproduction"): documents are Brown Corpus windows with one made-up fact inserted ("The
hometown of Kavor Delin is Velmora."), each asked by its cloze prompt (`camels.facts`). A tiny GPT-2 is
pre-trained on the pre-training split's documents *and* QA pairs (`qa-pretrain --documents true`), so that a
gradient step on a new document can change its answers. Entities are disjoint across the pre-training,
meta-training/validation and test splits. Every arm adapts the same base model on a test stream with one SGD step
per document (gradient norm clipped at ADAPT_CLIP), at its own lr chosen on a stream of the validation split; the
metric is the answer NLL after adaptation (lower is better), with F1 and EM of greedy answers beside it and a
no-adaptation row. Arms: uniform, SSM, TF-IDF, the oracle (weight only on the answer tokens: the sanity arm) and
CaMeLS, meta-trained per seed on the meta-train split with the inner lr at which uniform did best on the
validation stream.

Every step goes through the console script's subcommands into its own run folder, and a finished folder is
skipped, so an interrupted reproduction resumes. Seeds (fixed here, chosen before any result) vary the
weighting model's meta-training and the sampled validation and test streams; the data and the base model are
built once (seed 0), as the paper meta-trains and evaluates on one QA-tuned base model. `camels demo` runs
`reproduce --quick` (`run_demo`).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lmlab.claims import Claim, claims_section, seeds_cell, write_claims
from lmlab.errors import LmlabError
from lmlab.io import is_done, write_json, write_results

ARMS = ("uniform", "ssm", "TFIDF", "oracle", "CaMeLS")
CONTROLS = {"camels_vs_uniform": "uniform", "camels_vs_ssm": "ssm", "camels_vs_tfidf": "TFIDF"}
DATA_SEED = 0  # the data, tokenizer and base model: built once

FULL: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "data": {"qa_train": 2000, "qa_val": 100, "train": 480, "val": 120, "test": 120},
    "words": 24,
    "hidden": 64,
    "layers": 2,
    "qa_steps": 600,
    "qa_val_steps": 200,
    "qa_lr": 3e-3,
    "meta_steps": 100,
    "meta_val_steps": 10,
    "outer_lr": 3e-4,
    "stream_docs": 24,
    "lrs": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0],
}
QUICK: dict[str, Any] = {
    "seeds": [0],
    "data": {"qa_train": 60, "qa_val": 8, "train": 24, "val": 8, "test": 8},
    "words": 12,
    "hidden": 32,
    "layers": 1,
    "qa_steps": 20,
    "qa_val_steps": 20,
    "qa_lr": 3e-3,
    "meta_steps": 2,
    "meta_val_steps": 2,
    "outer_lr": 1e-3,
    "stream_docs": 4,
    "lrs": [0.5, 1.0],
}
MAX_TEXT_LEN = 128
THREADS = 1
# gradient-norm clip of every arm's adaptation step: above a typical uniform step (0.7-1.1 in the pilot)
ADAPT_CLIP = 2.0


def _cli(args: list[str]) -> None:
    from camels.cli import main

    code = main(args)
    if code != 0:
        raise LmlabError(f"`camels {' '.join(args[:1])}` failed with exit code {code} (its line is above)")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


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


def weights_picture(out: Path, weights: Path, tok_dir: Path, test_path: Path) -> None:
    """The CaMeLS weights on the first 3 documents of the test stream: token_weights.tsv/.html/.png."""
    from camels.data import build_stream, collate_docs, read_table
    from camels.models import load_tokenizer
    from camels.viz import token_weight_pairs, write_weight_views
    from camels.weighting import CaMeLSWeightModel

    tok = load_tokenizer(str(tok_dir))
    model = CaMeLSWeightModel.from_checkpoint(weights).eval()
    docs = build_stream("synthetic", read_table(test_path), 3, 0).docs
    batch = collate_docs(tok, docs, MAX_TEXT_LEN)
    with torch.no_grad():
        w = model(batch["input_ids"], batch["attention_mask"])
    write_weight_views(
        token_weight_pairs(tok, batch["input_ids"], batch["attention_mask"], w),
        out / "token_weights",
        "CaMeLS weights on synthetic test documents",
    )


def ssm_pipeline() -> str:
    """spaCy's English NER when a model is installed (en_core_web_sm), else the package's rule-based pipeline."""
    import spacy

    return "en_core_web_sm" if spacy.util.is_package("en_core_web_sm") else "rule_based"


class Reproduction:
    def __init__(self, out: Path, sizes: dict[str, Any]):
        self.out, self.sizes = out, sizes
        self.data = out / "data"
        self.qa_model = out / "qa_pretrain" / "model"
        self.ssm = ssm_pipeline()

    # ------------------------------------------------------------------------------------------- shared parts

    def build_base(self) -> Path:
        from camels.data import read_table
        from camels.facts import make_facts

        s = self.sizes
        if not (self.data / "test.csv").is_file():
            make_facts(self.data, DATA_SEED, s["data"], words=s["words"])
        train = read_table(self.data / "qa_train.csv")  # the tokenizer sees the pre-training split only
        texts = [*map(str, train["text"]), *map(str, train["question"])]
        base = build_tiny_base(self.out / "tiny_base", texts, DATA_SEED, s["hidden"], s["layers"])
        qa_dir = self.out / "qa_pretrain"
        if not is_done(qa_dir):
            _cli(
                [
                    "qa-pretrain",
                    *self._common(DATA_SEED),
                    "--model",
                    str(base),
                    "--train_path",
                    str(self.data / "qa_train.csv"),
                    "--val_path",
                    str(self.data / "qa_val.csv"),
                    "--documents",
                    "true",
                    "--max_text_len",
                    str(MAX_TEXT_LEN),
                    "--output_dir",
                    str(qa_dir),
                    "--lr",
                    str(s["qa_lr"]),
                    "--lt_batch_size",
                    "16",
                    "--accumulate_grad_batches",
                    "1",
                    "--grad_clip_thresh",
                    "1.0",
                    "--max_steps",
                    str(s["qa_steps"]),
                    "--val_steps",
                    str(s["qa_val_steps"]),
                    "--val_max_pairs",
                    "64",
                    "--checkpoint_every_n_steps",
                    "100000",
                ]
            )
        return self.qa_model

    @staticmethod
    def _common(seed: int) -> list[str]:
        return ["--dataset", "synthetic", "--seed", str(seed), "--progress_bar", "false", "--logger", "none"]

    # ------------------------------------------------------------------------------------------------ per seed

    def meta_train(self, seed: int, inner_lr: float) -> Path:
        s = self.sizes
        meta_dir = self.out / f"seed{seed}" / "meta_train"
        if not is_done(meta_dir):
            _cli(
                [
                    "meta-train",
                    *self._common(seed),
                    "--base_model",
                    str(self.qa_model),
                    "--pretrained_model",
                    str(self.qa_model),
                    "--train_path",
                    str(self.data / "train.csv"),
                    "--val_path",
                    str(self.data / "val.csv"),
                    "--loc_train_path",
                    str(self.data / "owt_train.csv"),
                    "--loc_val_path",
                    str(self.data / "owt_val.csv"),
                    "--output_dir",
                    str(meta_dir),
                    "--grad_clip_thresh",
                    "1.0",
                    "--max_steps",
                    str(s["meta_steps"]),
                    "--accumulate_grad_batches",
                    "1",
                    "--max_text_len",
                    str(MAX_TEXT_LEN),
                    "--inner_lr",
                    str(inner_lr),
                    "--outer_lr",
                    str(s["outer_lr"]),
                    "--val_steps",
                    str(s["meta_val_steps"]),
                    "--val_max_batches",
                    "8",
                    "--meta_grad_mode",
                    "adjoint",
                    "--checkpoint_every_n_steps",
                    "100000",
                ]
            )
        return meta_dir / "model"

    def eval_run(self, seed: int, arm: str, split: str, mode: str, lr: float, folder: Path) -> dict[str, Any]:
        """One `camels eval` run (skipped when its folder is finished); its results.json."""
        if not is_done(folder):
            weights = ["--weight_model_path", str(self.out / f"seed{seed}" / "meta_train" / "model")]
            _cli(
                [
                    "eval",
                    "--dataset",
                    "synthetic",
                    "--seed",
                    str(seed),
                    "--base_model",
                    str(self.qa_model),
                    "--test_path",
                    str(self.data / f"{split}.csv"),
                    "--downsample_to",
                    str(self.sizes["stream_docs"]),
                    "--weight_model",
                    arm,
                    *(weights if arm == "CaMeLS" else []),
                    "--ssm_spacy_model",
                    self.ssm,
                    "--tfidf_path",
                    str(self.data / "all.csv"),
                    "--min_threshold",
                    "0.05",
                    "--optimizer",
                    "sgd",
                    "--grad_clip_thresh",
                    str(ADAPT_CLIP),
                    "--lr",
                    str(lr),
                    "--max_text_len",
                    str(MAX_TEXT_LEN),
                    "--eval",
                    mode,
                    "--eval_init",
                    "true",
                    "--generation_strategy",
                    "greedy",
                    "--max_new_tokens",
                    "8",
                    "--generation_batch_size",
                    "16",
                    "--checkpoint_every_n_docs",
                    "0",
                    "--device",
                    "cpu",
                    "--progress_bar",
                    "false",
                    "--output_dir",
                    str(folder),
                    "--overwrite",
                    "true",
                ]
            )
        return _read(folder / "results.json")

    def choose_lr(self, seed: int, arm: str) -> float:
        """The lr of the grid with the lowest answer NLL on the seed's validation stream (never the test one)."""
        scores = {}
        for lr in self.sizes["lrs"]:
            folder = self.out / f"seed{seed}" / arm / f"val_lr{lr:g}"
            scores[lr] = self.eval_run(seed, arm, "val", "ppl", lr, folder)["final_nll"]
        return min(scores, key=lambda lr: (scores[lr], lr))

    def seed_rows(self, seed: int) -> list[dict[str, Any]]:
        lrs = {arm: self.choose_lr(seed, arm) for arm in ARMS if arm != "CaMeLS"}
        self.meta_train(seed, lrs["uniform"])  # inner lr: where uniform did best on the validation stream
        lrs["CaMeLS"] = self.choose_lr(seed, "CaMeLS")
        shares = self.answer_shares(seed)
        rows = []
        for arm in ARMS:
            folder = self.out / f"seed{seed}" / arm
            ppl = self.eval_run(seed, arm, "test", "ppl", lrs[arm], folder / "test_ppl")
            em = self.eval_run(seed, arm, "test", "em", lrs[arm], folder / "test_em")
            if arm == "uniform":  # before any update: the same for every arm
                rows.append(_row(seed, "none", None, ppl["init_nll"], em, "init_", None))
            rows.append(_row(seed, arm, lrs[arm], ppl["final_nll"], em, "", shares[arm]))
        return rows

    def answer_shares(self, seed: int) -> dict[str, float]:
        """Each arm's share of its weight on the answer tokens, over the seed's test stream (as eval builds it)."""
        from camels.data import build_stream, read_table
        from camels.models import load_tokenizer
        from camels.weighting import (
            CaMeLSWeightModel,
            OracleWeights,
            SSMWeights,
            TfidfModel,
            TfidfWeights,
            UniformWeights,
            load_spacy,
        )

        tok = load_tokenizer(str(self.qa_model))
        stream = build_stream(
            "synthetic", read_table(self.data / "test.csv"), self.sizes["stream_docs"], seed
        )
        answers: dict[str, list[str]] = {}
        for _, gold, d in stream.qa:
            answers.setdefault(stream.docs[d], []).append(gold)
        oracle = OracleWeights(tok, answers, MAX_TEXT_LEN)
        corpus = [str(t) for t in read_table(self.data / "all.csv")["text"]]
        weightings = {
            "uniform": UniformWeights(),
            "ssm": SSMWeights(load_spacy(self.ssm), tok),
            "TFIDF": TfidfWeights(TfidfModel(corpus), tok, 0.05),
            "oracle": oracle,
            "CaMeLS": CaMeLSWeightModel.from_checkpoint(
                self.out / f"seed{seed}" / "meta_train" / "model"
            ).eval(),
        }
        return {arm: answer_share(w, oracle, tok, stream.docs, MAX_TEXT_LEN) for arm, w in weightings.items()}


def answer_share(weighting: Any, oracle: Any, tokenizer: Any, docs: list[str], max_len: int) -> float:
    """Σ weight on the answer tokens (where `oracle` is 1) / Σ weight, over all documents; 0 if no weight at all."""
    from camels.data import collate_docs

    on, total = 0.0, 0.0
    with torch.no_grad():
        for doc in docs:
            batch = collate_docs(tokenizer, [doc], max_len)
            w = weighting(batch["input_ids"], batch["attention_mask"]).float()
            on += float((w * oracle(batch["input_ids"], batch["attention_mask"])).sum())
            total += float(w.sum())
    return on / total if total > 0 else 0.0


def _row(
    seed: int,
    arm: str,
    lr: float | None,
    nll: float,
    em: dict[str, Any],
    prefix: str,
    share: float | None,
) -> dict[str, Any]:
    return {
        "seed": seed,
        "arm": arm,
        "lr": lr,
        "answer_weight_share": share,
        "answer_nll": nll,
        "f1": em[f"{prefix}avg_f1"],
        "em_strict": em[f"{prefix}em_strict"],
        "em_prefix": em[f"{prefix}em"],
    }


def per_seed(out: Path, seeds: list[int], arm: str, key: str = "final_nll") -> list[float]:
    """An arm's test answer NLL per seed, read from its run folders' results.json."""
    return [_read(out / f"seed{s}" / arm / "test_ppl" / "results.json")[key] for s in seeds]


def build_claims(out: Path, seeds: list[int]) -> list[Claim]:
    metric = "answer NLL after adaptation (test stream, nats/token)"
    camels = per_seed(out, seeds, "CaMeLS")
    claims = [
        Claim(
            cid,
            f"CaMeLS's weights give a lower answer NLL after adaptation than {control}'s",
            metric,
            "lower",
            "CaMeLS",
            control,
            camels,
            per_seed(out, seeds, control),
        )
        for cid, control in CONTROLS.items()
    ]
    claims.append(
        Claim(
            "oracle_vs_uniform",
            "sanity: weighting only the answer tokens beats uniform weights (one step per document can store a "
            "fact, and where the weight goes matters)",
            metric,
            "lower",
            "oracle",
            "uniform",
            per_seed(out, seeds, "oracle"),
            per_seed(out, seeds, "uniform"),
        )
    )
    return claims


def _stats(values: list[float], digits: int = 4) -> str:
    return seeds_cell(values, f".{digits}f", f".{digits}f")


def _mean(rows: list[dict[str, Any]], arm: str, key: str) -> float:
    return statistics.fmean(r[key] for r in rows if r["arm"] == arm)


def _meta_summary(out: Path, seeds: list[int]) -> list[str]:
    lines = []
    for s in seeds:
        history = [
            json.loads(line)
            for line in (out / f"seed{s}" / "meta_train" / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        val = [h for h in history if "val/total_loss" in h]
        if val:
            lines.append(
                f"- seed {s}: validation total loss {val[0]['val/total_loss']:.4f} (before the first update) -> "
                f"best {min(h['val/total_loss'] for h in val):.4f}"
            )
    return lines


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    claims: list[Claim],
    sizes: dict[str, Any],
    ssm: str,
    seconds: float,
) -> None:
    seeds = sizes["seeds"]
    arms = ["none", *ARMS]
    lines = ["# CaMeLS: a controlled reproduction on synthetic facts among Brown Corpus text", ""]
    lines.append(claims_section(claims, sanity=["oracle_vs_uniform"]))
    lines += [
        f"Wall time {seconds / 60:.1f} min ({THREADS} torch thread); seeds {', '.join(map(str, seeds))}; "
        f"SSM used spaCy pipeline `{ssm}`"
        + (
            " (no English spaCy model is installed: the package's rule-based entity ruler)"
            if ssm == "rule_based"
            else ""
        )
        + ".",
        "",
        "## Every arm (mean ± std over seeds, then each seed)",
        "",
        "Answer NLL: token-mean NLL of the gold answer tokens (and EOS) of the test stream's questions after "
        "adaptation; F1 and EM (strict SQuAD EM and the reference's prefix EM) of greedy answers, ×100. "
        "`none` is the base model before any update. lr: the SGD lr chosen per seed on the validation stream. "
        "Answer weight: the arm's share of its total token weight that falls on the answer tokens, over the test "
        "stream, ×100 (the oracle's is 100 by construction).",
        "",
        "| arm | answer NLL | F1 | EM strict | EM prefix | answer weight (%) | lr per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        lr = ", ".join("–" if r["lr"] is None else f"{r['lr']:g}" for r in mine)
        share = "–" if arm == "none" else _stats([100 * r["answer_weight_share"] for r in mine], 1)
        lines.append(
            f"| {arm} | {_stats([r['answer_nll'] for r in mine])} | {_stats([100 * r['f1'] for r in mine], 1)} "
            f"| {_stats([100 * r['em_strict'] for r in mine], 1)} | {_stats([100 * r['em_prefix'] for r in mine], 1)} "
            f"| {share} | {lr} |"
        )
    data = sizes["data"]
    lines += [
        "",
        "## Design",
        "",
        f"- Data (`camels.facts`, seed {DATA_SEED}): each document is a {sizes['words']}-word window of a Brown Corpus "
        'paragraph with one made-up fact inserted ("The hometown of Kavor Delin is Velmora." or "The trade of '
        "... is baker.\"); its question is the fact's cloze prompt. Documents per split: "
        + ", ".join(f"{k} {v}" for k, v in data.items())
        + ". Entities and filler paragraphs are disjoint across splits (tested); values are shared, so every "
        "test fact is new to the model.",
        f"- Base model: GPT-2, {sizes['layers']} layers, {sizes['hidden']} wide, BPE tokenizer trained on the "
        f"pre-training split; `qa-pretrain --documents true`: {sizes['qa_steps']} Adam steps (lr {sizes['qa_lr']:g}, "
        "batch 16) on the pre-training split's documents and QA pairs mixed, model of the lowest validation "
        "answer NLL kept.",
        f"- Adaptation: one SGD step per document on a stream of {sizes['stream_docs']} documents (sampled per seed), "
        f"weighted loss over max_text_len {MAX_TEXT_LEN} (the reference's normalisation); each arm's lr is the "
        f"best of {', '.join(f'{v:g}' for v in sizes['lrs'])} by answer NLL on a {sizes['stream_docs']}-document "
        "stream of the validation split (the same seed's sample).",
        "- Arms: uniform (plain fine-tuning), SSM (salient spans), TF-IDF (min_threshold 0.05, fitted on all "
        "documents), oracle (weight 1 on the gold answer's tokens in the document, 0 elsewhere: the sanity arm), "
        f"CaMeLS (weighting model = the QA-tuned base as encoder + head, meta-trained per seed for "
        f"{sizes['meta_steps']} updates on the meta-train split: 6 documents per meta-step, sequential inner SGD "
        "at the lr where uniform did best on the validation stream, adjoint meta-gradients, outer Adam lr "
        f"{sizes['outer_lr']:g} with its gradient norm clipped at 1, validation every {sizes['meta_val_steps']} "
        "updates on 8 meta-validation batches, the weighting model of the lowest validation loss kept).",
        "- Seeds vary the meta-training and the sampled validation and test streams; data and base model are "
        "built once, as the paper evaluates on one QA-tuned base model.",
        "",
        "Meta-training (validation total loss = answer NLL + 0.1 × locality KL, before the first update and best):",
        "",
        *_meta_summary(out, seeds),
        "",
        "Run folders: `seed<k>/<arm>/test_ppl` and `test_em` (the test runs), `seed<k>/<arm>/val_lr<lr>` (the lr "
        "choice), `seed<k>/meta_train`, `qa_pretrain`, `data`. Token weights of the first seed's CaMeLS model: "
        "token_weights.html / token_weights.png.",
        "",
        "## Reading",
        "",
        reading(claims, rows, sizes["stream_docs"]),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def reading(claims: list[Claim], rows: list[dict[str, Any]], n_questions: int) -> str:
    """The plain-words paragraph, from the measured claims and rows."""
    by = {c.id: c for c in claims}
    nll = {arm: _mean(rows, arm, "answer_nll") for arm in ("none", *ARMS)}
    share = {arm: 100 * _mean(rows, arm, "answer_weight_share") for arm in ARMS}
    f1 = {arm: 100 * _mean(rows, arm, "f1") for arm in ("none", *ARMS)}
    sanity = by["oracle_vs_uniform"]
    text = [
        f"Answer NLL falls from {nll['none']:.3f} before adaptation to {nll['uniform']:.3f} with uniform weights "
        f"and {nll['oracle']:.3f} with the oracle's: "
        + (
            "one SGD step per document does store part of each new fact, and where the weight goes matters, so "
            "the set-up can show a weighting's effect (sanity arm holds)."
            if sanity.holds
            else "the oracle does not beat uniform by the rule, so this set-up cannot show a weighting's effect "
            "and the other claims say little (sanity arm fails)."
        )
    ]
    held = [control for cid, control in CONTROLS.items() if by[cid].holds]
    missed = [control for cid, control in CONTROLS.items() if not by[cid].holds]
    gap = nll["uniform"] - nll["oracle"]
    closed = (
        f" and closes {100 * (nll['uniform'] - nll['CaMeLS']) / gap:.0f}% of the uniform-oracle gap"
        if gap > 0
        else ""
    )
    text.append(
        f"CaMeLS reaches {nll['CaMeLS']:.3f}{closed}; it "
        + (f"beats {', '.join(held)} by the rule" if held else "beats no control by the rule")
        + (f" and does not beat {', '.join(missed)}." if missed else ".")
    )
    above = [arm for arm in ("ssm", "TFIDF") if nll[arm] > nll["uniform"]]
    text.append(
        f"Its meta-learned weights put {share['CaMeLS']:.1f}% of their mass on the answer tokens, against "
        f"{share['uniform']:.1f}% for uniform, {share['ssm']:.1f}% for SSM and {share['TFIDF']:.1f}% for TF-IDF"
        + (
            ": it learned on the meta-train split where the facts sit in a document"
            if share["CaMeLS"] > share["uniform"]
            else ": it did not learn to find the facts"
        )
        + (
            f"; {' and '.join(above)} spend much of their weight on the Brown text's names and rare words and end "
            "above uniform's NLL."
            if above
            else "."
        )
    )
    text.append(
        f"Greedy answers are coarse at {n_questions} one-word answers a seed (one question = "
        f"{100 / n_questions:.1f} points): F1 none {f1['none']:.1f}, uniform {f1['uniform']:.1f}, oracle "
        f"{f1['oracle']:.1f}, CaMeLS {f1['CaMeLS']:.1f}; the NLL differences are not yet large enough to change "
        "many argmax answers, so the claims rest on the NLL."
        if f1["CaMeLS"] <= f1["uniform"]
        else f"Greedy answers agree (F1 uniform {f1['uniform']:.1f}, CaMeLS {f1['CaMeLS']:.1f}, oracle "
        f"{f1['oracle']:.1f}), though at {n_questions} one-word answers a seed one question is "
        f"{100 / n_questions:.1f} points."
    )
    text.append(
        "What this does not show: the questions repeat the document's own sentence as a cloze prompt (the "
        "paper's questions paraphrase), the base is a 2-layer model trained here, and the adaptation is SGD "
        "(the meta-training's inner optimiser) where the paper adapts with Adam."
    )
    return " ".join(text)


def run_reproduce(cfg: Any) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(THREADS)  # results repeat for a given thread count; this one is fixed
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    sizes = dict(QUICK if cfg.quick else FULL)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run = Reproduction(out, sizes)
    run.build_base()
    rows = [row for seed in sizes["seeds"] for row in run.seed_rows(seed)]
    claims = build_claims(out, sizes["seeds"])
    write_claims("camels", claims, out)
    write_results(rows, out, name="results")
    first = sizes["seeds"][0]
    weights_picture(out, out / f"seed{first}" / "meta_train" / "model", run.qa_model, run.data / "test.csv")
    seconds = time.time() - t0
    write_report(out, rows, claims, sizes, run.ssm, seconds)
    write_json(out / "reproduce.json", {"seconds": seconds, "sizes": sizes, "ssm_spacy_model": run.ssm})
    print(f"[camels reproduce] claims: {out}/claims.json, report: {out}/report.md")
    return {"seconds": seconds}


def run_demo(cfg: Any) -> dict[str, Any]:
    """`camels demo --output_dir X`: exactly `camels reproduce --quick true --output_dir X`."""
    from camels.config import ReproduceConfig

    return run_reproduce(ReproduceConfig(output_dir=cfg.output_dir, quick=True))


__all__ = ["ARMS", "FULL", "QUICK", "build_claims", "per_seed", "run_demo", "run_reproduce", "ssm_pipeline"]
