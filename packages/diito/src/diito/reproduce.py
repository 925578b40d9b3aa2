"""`diito reproduce` / `diito demo`: the scaled-down reproduction (spec section 13), offline on CPU.

corpus -> WordPiece tokenizer (trained here) -> binarize / token-counts -> a small BERT teacher pre-trained with
MLM -> a student extracted from teacher layers -> standard distillation and DIITO with identical seeds and steps
-> held-out MLM perplexity, causal KL, interchange-intervention accuracy (IIA), and GLUE sample tasks (MRPC,
STS-B) fine-tuned from each student -> table (results.md/json/csv) and plots.

`--corpus wikipedia-bert-ids` distils on lmlab's shipped bert-base-uncased id sample instead (no vocab file is
shipped, so there is no tokenizer and the GLUE columns are left out for that corpus).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from lmlab.errors import LmlabError

PAPER_GLUE = """| model (paper, 6 layers, GLUE dev) | tokens | avg | CoLA | MNLI | MRPC | QNLI | QQP | RTE | SST-2 | STS-B |
|---|---|---|---|---|---|---|---|---|---|---|
| DistilBERT (Sanh et al.) | 3.3B | 79.59 | 51.30 | 82.10 | 87.50 | 89.20 | 88.50 | 59.90 | 91.30 | 86.90 |
| standard distillation | 0.1B | 75.80 | 40.43 | 78.95 | 87.45 | 84.76 | 84.96 | 60.10 | 89.38 | 80.40 |
| DIITO | 0.1B | 77.14 | 45.17 | 79.68 | 88.18 | 85.83 | 85.31 | 60.94 | 90.32 | 81.69 |"""


@dataclass
class Recipe:
    vocab_size: int = 2000
    t_layers: int = 6
    hidden: int = 64
    heads: int = 4
    intermediate: int = 256
    student_layers: tuple = (0, 2, 4)
    teacher_site: int = 3
    student_site: int = 1
    max_len: int = 64
    batch_size: int = 16
    teacher_steps: int = 800
    teacher_lr: float = 1e-3
    student_steps: int = 300
    student_lr: float = 5e-4
    accumulate: int = 1
    seeds: tuple = (42, 66)
    glue_tasks: tuple = ("mrpc", "stsb")
    glue_epochs: float = 10.0
    eval_batches: int = 20


class TeacherMLM(pl.LightningModule):
    def __init__(self, model, dataset, collator, batch_size: int, lr: float, total: int, seed: int):
        super().__init__()
        self.model = model  # lmlab's TrainMode puts it in train mode when fitting starts
        self.dataset, self.collator, self.bs, self.lr, self.total, self.seed = (
            dataset,
            collator,
            batch_size,
            lr,
            total,
            seed,
        )

    def training_step(self, batch, _):
        loss = self.model(
            input_ids=batch["base_ids"], attention_mask=batch["base_mask"], labels=batch["labels"]
        ).loss
        self.log("train/loss", loss.detach(), on_step=True, batch_size=self.bs)
        return loss

    def configure_optimizers(self):
        from transformers import get_scheduler

        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, betas=(0.9, 0.98), eps=1e-6)
        warm = math.ceil(0.05 * self.total)
        sched = get_scheduler("linear", opt, num_warmup_steps=warm, num_training_steps=self.total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        from diito.data.dataset import GroupedBatchSampler

        return DataLoader(
            self.dataset,
            batch_sampler=GroupedBatchSampler(self.dataset.lengths, self.bs, seed=self.seed),
            collate_fn=self.collator,
        )


def _texts(corpus: str) -> tuple[list[str], list[str]]:
    from lmlab.data import sample_path

    lines = [
        ln.strip() for ln in sample_path("wikitext/wiki_00.txt").read_text(encoding="utf-8").splitlines()
    ]
    lines = [ln for ln in lines if len(ln.split()) >= 8]
    n_held = max(2, len(lines) // 10)
    return lines[n_held:], lines[:n_held]


def prepare_data(out: Path, recipe: Recipe, corpus: str) -> dict:
    """Tokenizer, binarized train/held-out files and token counts under out/data."""
    from lmlab.data import sample_path

    from diito.config import BinarizeConfig, TokenCountsConfig
    from diito.data.binarized import from_sequences, save_binarized
    from diito.data.commands import bert_specials, run_binarize, run_token_counts

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": data / "train.npz",
        "heldout": data / "heldout.npz",
        "counts": data / "counts.npy",
        "tokenizer": data / "tokenizer" if corpus == "wikitext" else None,
    }
    # made once: the WordPiece trainer is not deterministic across processes, and the teacher and the students
    # must keep the ids they were trained with
    if all(p.exists() for p in paths.values() if p is not None):
        return paths
    if corpus == "wikipedia-bert-ids":
        seqs = [
            json.loads(x) for x in sample_path("wikipedia-bert-ids/sequences.jsonl").read_text().splitlines()
        ]
        seqs = [s for s in seqs if len(s) > 11]
        n_held = max(2, len(seqs) // 10)
        save_binarized(
            from_sequences(seqs[n_held:], 30522, bert_specials(), "bert-base-uncased"), paths["train"]
        )
        save_binarized(
            from_sequences(seqs[:n_held], 30522, bert_specials(), "bert-base-uncased"), paths["heldout"]
        )
    elif corpus == "wikitext":
        from lmlab.testing import train_wordpiece_tokenizer

        train, held = _texts(corpus)
        tok = train_wordpiece_tokenizer(train, vocab_size=recipe.vocab_size, model_max_length=recipe.max_len)
        tok.save_pretrained(data / "tokenizer")
        paths["tokenizer"] = data / "tokenizer"
        for name, texts in (("train", train), ("heldout", held)):
            (data / f"{name}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
            res = run_binarize(
                BinarizeConfig(
                    input=str(data / f"{name}.txt"),
                    tokenizer_name=str(data / "tokenizer"),
                    dump_file=str(data / name),
                )
            )
            Path(res["path"]).replace(paths[name])
    else:
        raise LmlabError(f"--corpus must be wikitext or wikipedia-bert-ids, got {corpus!r}")
    run_token_counts(TokenCountsConfig(data_file=str(paths["train"]), token_counts_dump=str(paths["counts"])))
    return paths


def _collator(data, recipe: Recipe, counts_path, causal: bool, seed: int, vocab: int, mlm_weights=None):
    from diito.data.binarized import load_token_counts
    from diito.data.dataset import Collator, CollatorOptions
    from diito.masking import token_weights

    sp = data.special
    counts = load_token_counts(counts_path, vocab)
    w = token_weights(
        torch.from_numpy(counts), [sp[k] for k in ("pad", "cls", "sep", "mask", "unk") if k in sp]
    )
    opts = CollatorOptions(
        mlm=True, causal=causal, interchange_prop=0.3, interchange_consecutive_only=True, seed=seed
    )
    return Collator(opts, sp.get("pad", 0), sp["mask"], vocab, w)


def _dataset(path, recipe: Recipe, seed: int):
    from diito.data.binarized import load_binarized
    from diito.data.dataset import PairedSeqDataset

    data = load_binarized(path)
    sp = data.special
    return data, PairedSeqDataset(
        data.sequences(), sp["cls"], sp["sep"], sp.get("unk"), recipe.max_len, seed=seed
    )


def pretrain_teacher(out: Path, paths: dict, recipe: Recipe, device: str, seed: int = 0) -> Path:
    from lmlab.seed import seed_everything
    from lmlab.training import TrainerOptions, build_trainer
    from transformers import BertConfig, BertForMaskedLM

    folder = out / "teacher"
    if (folder / "config.json").is_file():
        return folder
    seed_everything(seed)
    data, ds = _dataset(paths["train"], recipe, seed)
    cfg = BertConfig(
        vocab_size=data.vocab_size,
        hidden_size=recipe.hidden,
        num_hidden_layers=recipe.t_layers,
        num_attention_heads=recipe.heads,
        intermediate_size=recipe.intermediate,
        max_position_embeddings=max(recipe.max_len, 128),
        pad_token_id=data.special.get("pad", 0),
    )
    model = BertForMaskedLM(cfg)
    collator = _collator(data, recipe, paths["counts"], False, seed, data.vocab_size)
    opts = TrainerOptions(
        output_dir=str(out / "teacher_run"),
        device=device,
        max_steps=recipe.teacher_steps,
        logger="none",
        progress_bar=False,
        checkpoint_every_n_steps=10**6,
        log_every_n_steps=10,
    )
    trainer = build_trainer(opts, gradient_clip_val=5.0, use_distributed_sampler=False)
    trainer.fit(
        TeacherMLM(model, ds, collator, recipe.batch_size, recipe.teacher_lr, recipe.teacher_steps, seed)
    )
    model.save_pretrained(folder)
    if paths["tokenizer"] is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(paths["tokenizer"]).save_pretrained(folder)
    return folder


def distil(
    out: Path,
    name: str,
    teacher: Path,
    student_init: Path,
    paths: dict,
    mapping: Path,
    causal: bool,
    recipe: Recipe,
    seed: int,
    device: str,
) -> Path:
    from diito.config import TrainConfig
    from diito.trainer import run_train

    run = out / "runs" / f"{name}-seed{seed}"
    if (run / "DONE").exists():
        return run
    alpha = 0.25 if causal else 0.33
    cfg = TrainConfig(
        output_dir=str(run),
        device=device,
        teacher_name=str(teacher),
        student_pretrained_weights=str(student_init),
        data_file=str(paths["train"]),
        token_counts=str(paths["counts"]),
        neuron_mapping=str(mapping) if causal else "",
        mlm=True,
        alpha_ce=alpha,
        alpha_mlm=alpha,
        alpha_cos=alpha,
        alpha_clm=0.0,
        alpha_causal_ce=0.25 if causal else 0.0,
        interchange_prop=0.3,
        interchange_consecutive_only=True,
        freeze_pos_embs=True,
        batch_size=recipe.batch_size,
        accumulate_grad_batches=recipe.accumulate,
        max_steps=recipe.student_steps,
        learning_rate=recipe.student_lr,
        max_model_input_size=recipe.max_len,
        seed=seed,
        logger="none",
        progress_bar=False,
        log_every_n_steps=5,
        checkpoint_every_n_steps=10**6,
        save_each_epoch=False,  # the report uses the final student only
    )
    run_train(cfg)
    return run


def heldout_metrics(
    teacher_dir: Path, student_dir: Path, paths: dict, mapping: Path, recipe: Recipe, device: str
) -> dict:
    from lmlab.device import torch_device
    from torch.utils.data import DataLoader
    from transformers import AutoModelForMaskedLM

    from diito.evaluation import distillation_metrics
    from diito.mapping import load_mapping

    dev = torch_device(device)
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).to(dev)
    student = AutoModelForMaskedLM.from_pretrained(student_dir).to(dev)
    data, ds = _dataset(paths["heldout"], recipe, seed=1234)
    collator = _collator(data, recipe, paths["counts"], True, 1234, data.vocab_size)
    batches = [
        [(b, 0, i) for i in range(s, min(s + recipe.batch_size, len(ds)))]
        for b, s in enumerate(range(0, len(ds), recipe.batch_size))
    ]
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=collator)
    return distillation_metrics(
        teacher, student, loader, load_mapping(mapping), max_batches=recipe.eval_batches
    )


def glue_scores(student_dir: Path, task: str, recipe: Recipe, device: str, seed: int, out: Path) -> dict:
    from lmlab.data import sample_path

    from diito.config import EvalGlueConfig
    from diito.eval.glue import run_eval_glue

    folder = {"mrpc": "mrpc", "stsb": "sts-b"}[task]
    cfg = EvalGlueConfig(
        model_name_or_path=str(student_dir),
        task_name=task,
        train_file=str(sample_path(f"glue/{folder}/train.tsv")),
        validation_file=str(sample_path(f"glue/{folder}/dev.tsv")),
        output_dir=str(out),
        learning_rate=1e-4,
        num_train_epochs=recipe.glue_epochs,
        per_device_train_batch_size=8,
        device=device,
        seed=seed,
        progress_bar=False,
    )
    return run_eval_glue(cfg)


def write_mapping(out: Path, recipe: Recipe) -> Path:
    path = out / "single_middle.nm"
    path.parent.mkdir(parents=True, exist_ok=True)
    hd = recipe.hidden // recipe.heads
    spec = {
        "interchange_variable_mappings": [
            {
                "teacher_variable_names": [f"$L:{recipe.teacher_site}$H:[0:{recipe.heads}]$[0:{hd}]"],
                "student_variable_names": [f"$L:{recipe.student_site}$H:[0:{recipe.heads}]$[0:{hd}]"],
            }
        ]
    }
    path.write_text(json.dumps(spec, indent=2))
    return path


def run_pipeline(out: Path, recipe: Recipe, device: str, corpus: str = "wikitext") -> dict:
    from lmlab.io import write_json, write_results
    from lmlab.logging import read_jsonl
    from lmlab.plots import plot_curves

    from diito.extract import extract

    out.mkdir(parents=True, exist_ok=True)
    paths = prepare_data(out, recipe, corpus)
    teacher = pretrain_teacher(out, paths, recipe, device)
    student_init = out / "student_init"
    if not (student_init / "config.json").is_file():
        extract(str(teacher), student_init, layers=list(recipe.student_layers))
    mapping = write_mapping(out, recipe)
    rows = []
    curves: dict[str, list] = {}
    steps_axis: list = []
    glue = corpus == "wikitext" and recipe.glue_tasks
    for method, causal in (("standard", False), ("diito", True)):
        for seed in recipe.seeds:
            run = distil(out, method, teacher, student_init, paths, mapping, causal, recipe, seed, device)
            row = {
                "method": method,
                "seed": seed,
                **heldout_metrics(teacher, run / "model", paths, mapping, recipe, device),
            }
            if glue:
                for task in recipe.glue_tasks:
                    res = glue_scores(run / "model", task, recipe, device, seed, run / f"glue-{task}")
                    row[f"{task}"] = 100 * res["score"]
            rows.append(row)
            log = [r for r in read_jsonl(run / "metrics.jsonl") if "train/loss_ce" in r]
            curves[f"{method} seed {seed} (KL term)"] = [r["train/loss_ce"] for r in log]
            steps_axis = [r["step"] for r in log]
    # the teacher row carries only its own MLM perplexity: its causal KL / IIA "against itself" would put the
    # student's site on the teacher, which is not the same intervention
    teacher_ppl = heldout_metrics(teacher, teacher, paths, mapping, recipe, device)["mlm_perplexity"]
    rows.append({"method": "teacher", "seed": 0, "mlm_perplexity": teacher_ppl})
    write_results(rows, out, name="results")
    n = min(len(v) for v in curves.values())
    plot_curves(
        steps_axis[:n],
        {k: v[:n] for k, v in curves.items()},
        out / "train_kl.png",
        xlabel="optimizer step",
        ylabel="distillation KL (train)",
        title="standard vs DIITO",
    )
    summary = _summary(rows, recipe, corpus, glue)
    (out / "report.md").write_text(summary)
    write_json(out / "summary.json", {"recipe": dataclasses.asdict(recipe), "corpus": corpus, "rows": rows})
    print(summary)
    print(f"[diito] results in {out}")
    return {"rows": rows}


def _summary(rows: list[dict], recipe: Recipe, corpus: str, glue) -> str:
    cols = ["mlm_perplexity", "causal_kl", "iia", "plain_agreement"] + ([*recipe.glue_tasks] if glue else [])
    lines = [
        f"# DIITO scaled-down reproduction ({corpus})",
        "",
        f"teacher: BERT {recipe.t_layers}x{recipe.hidden}, {recipe.teacher_steps} MLM steps; student: DistilBERT "
        f"{len(recipe.student_layers)} layers from teacher layers {list(recipe.student_layers)}; {recipe.student_steps} "
        f"distillation steps x batch {recipe.batch_size * recipe.accumulate}; mapping teacher site {recipe.teacher_site} -> "
        f"student site {recipe.student_site}; seeds {list(recipe.seeds)}. Held-out metrics on {recipe.eval_batches} batches; "
        "IIA = argmax agreement of student and teacher under the same interventions; GLUE columns = sample tasks "
        "(a handful of dev examples: noise-level, shown for the pipeline, not as evidence).",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method in ("standard", "diito", "teacher"):
        sel = [r for r in rows if r["method"] == method]
        if not sel:
            continue
        cells = []
        for c in cols:
            vals = [r[c] for r in sel if c in r]
            if not vals:
                cells.append("-")
            elif len(vals) > 1:
                cells.append(f"{statistics.mean(vals):.4g} ± {statistics.stdev(vals):.2g}")
            else:
                cells.append(f"{vals[0]:.4g}")
        lines.append(f"| {method} (n={len(sel)}) | " + " | ".join(cells) + " |")
    lines += ["", "Paper (Table: GLUE dev, reference README):", "", PAPER_GLUE, ""]
    return "\n".join(lines)


def run_reproduce(cfg) -> dict:
    from lmlab.device import set_threads

    if cfg.threads > 0:
        set_threads(cfg.threads)
    recipe = Recipe(teacher_steps=cfg.teacher_steps, student_steps=cfg.student_steps)
    if cfg.seeds:
        recipe.seeds = tuple(cfg.seeds)
    recipe.glue_tasks = tuple(cfg.glue_tasks) if cfg.glue_tasks else recipe.glue_tasks
    if cfg.corpus == "wikipedia-bert-ids":
        recipe.vocab_size = 30522
    return run_pipeline(Path(cfg.output_dir), recipe, cfg.device, cfg.corpus)


def run_demo(cfg) -> dict:
    from lmlab.device import set_threads

    set_threads(cfg.threads)
    recipe = Recipe(
        vocab_size=1200,
        t_layers=4,
        hidden=64,
        heads=4,
        intermediate=128,
        student_layers=(0, 2),
        teacher_site=2,
        student_site=1,
        max_len=64,
        batch_size=16,
        teacher_steps=max(cfg.steps * 2, 1),
        student_steps=cfg.steps,
        seeds=(cfg.seed,),
        glue_tasks=("mrpc",),
        glue_epochs=2.0,
        eval_batches=3,
    )
    return run_pipeline(Path(cfg.output_dir), recipe, "cpu")
