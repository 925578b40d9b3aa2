"""GLUE fine-tuning protocol of the paper (§4.1, App. E): AdamW, lr 1e-5, batch 32, constant LR after 10% linear
warm-up, weight decay 0 (Table 14; 0.01 in the text and the reference script: --weight_decay), max length 128,
dropout 0.1 + linear head on the first token's final hidden state, MSE for STS-B, balanced cross-entropy,
best epoch over 10, mean over 3 seeds; RTE fine-tuned but excluded from the average; MNLI scored on matched and
mismatched dev concatenated.

Fixes of the reference (`glue_finetuning.py`, which does not run): attention masks are passed, sentence pairs
are joined with the tokenizer's separator (EOS for Pythia-style tokenizers without one, instead of nothing),
a pad token is set explicitly, CE is applied to logits (not to softmax probabilities), training data shuffled.

Each (task, seed) trains through `lmlab.training.build_trainer` in `<output_dir>/<task>/seed<k>/`: resumable
checkpoints, bit-exact resume with dropout on, a stop on a non-finite loss; a finished one leaves its dev scores
in `history.json`, so running the same command again skips it and resumes the interrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lmlab.errors import LmlabError
from lmlab.glue import TASKS
from torch import nn
from torch.utils.data import DataLoader

from headless_lm.config import ALL_TASKS, GlueConfig
from headless_lm.losses import balanced_cross_entropy

EXCLUDED_FROM_AVERAGE = ("rte",)
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "spearmanr"}


def normalise_task(name: str) -> str:
    from lmlab.glue import normalise_task as lmlab_task

    task = lmlab_task(name)
    if task not in ALL_TASKS:
        raise LmlabError(
            f"GLUE task {name!r} is not part of the protocol; choose from {', '.join(ALL_TASKS)}"
        )
    return task


def read_task(data_dir: str | Path, task: str, split: str, max_samples: int | None = None):
    """(texts_a, texts_b | None, labels) of a GLUE task split ("train" or "dev"; MNLI's dev is matched and
    mismatched concatenated), read strictly by `lmlab.glue.read_glue` from a raw GLUE folder (`MRPC/dev.tsv`,
    headerless CoLA, `MNLI/dev_matched.tsv`) or files with the Hugging Face column names."""
    from lmlab.glue import eval_splits, read_glue

    task = normalise_task(task)
    parts = [
        read_glue(data_dir, task, name, max_samples)
        for name in (["train"] if split == "train" else eval_splits(task))
    ]
    for part in parts:
        if part.labels is None:
            raise LmlabError(
                f"{part.source} has no labels; fine-tuning needs the labelled train and dev files"
            )
    a = [t for part in parts for t in part.texts_a]
    b = None if parts[0].texts_b is None else [t for part in parts for t in part.texts_b]
    return a, b, [y for part in parts for y in part.labels]


def encode_pairs(tokenizer, a: list[str], b: list[str] | None, max_len: int) -> list[list[int]]:
    """Token ids of single sentences or pairs; pairs joined by the tokenizer's own template when it has a
    separator token, else by EOS (Pythia-style tokenizers)."""
    if b is None:
        return tokenizer(a, truncation=True, max_length=max_len)["input_ids"]
    if tokenizer.sep_token_id is not None:
        return tokenizer(a, b, truncation=True, max_length=max_len)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LmlabError("the tokenizer has neither a separator nor an EOS token to join sentence pairs")
    out = []
    for x, y in zip(a, b, strict=True):
        ids = (
            tokenizer(x, add_special_tokens=False)["input_ids"]
            + [eos]
            + tokenizer(y, add_special_tokens=False)["input_ids"]
        )
        out.append(ids[:max_len])
    return out


def _collate(pad_id: int, regression: bool):
    def fn(items):
        width = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (seq, _) in enumerate(items):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        labels = torch.tensor([y for _, y in items], dtype=torch.float if regression else torch.long)
        return ids, mask, labels

    return fn


class GlueModule(pl.LightningModule):
    """Backbone + dropout 0.1 + linear on the first token's last hidden state.

    The training data is an endless shuffled stream (`StepSampler`: epoch e is a permutation seeded by
    seed + e) that a resumed run continues at its next sample; the dev score of every finished epoch is part of
    the checkpoint (plain floats, loadable with weights_only=True)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        task: str,
        cfg: GlueConfig,
        total_steps: int,
        train_items: list,
        collate: Any,
        seed: int,
    ):
        super().__init__()
        self.backbone = backbone
        dim = self.backbone.get_input_embeddings().weight.shape[1]
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(dim, num_labels)
        self.task, self.num_labels, self.cfg, self.total = task, num_labels, cfg, total_steps
        self.train_items, self.collate, self.seed = train_items, collate, seed
        self.history: list[float] = []
        self.samples_seen = 0

    def forward(self, ids, mask):
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return self.head(self.dropout(hidden))

    def _loss(self, logits, labels):
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels)
        if self.cfg.loss == "balanced":
            return balanced_cross_entropy(logits, labels)
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, batch, _):
        ids, mask, labels = batch
        self.samples_seen += len(labels)
        loss = self._loss(self(ids, mask), labels)  # lmlab's FiniteGuard stops on a non-finite loss
        self.log("train/loss", loss, batch_size=len(labels))
        return loss

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> float:
        """The task's main dev metric (accuracy, Matthews for CoLA, Spearman for STS-B)."""
        from lmlab.metrics import glue_metrics

        was_training = self.training
        self.eval()
        preds, labels = [], []
        for ids, mask, y in loader:
            logits = self(ids.to(self.device), mask.to(self.device))
            preds += (
                (logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1)).float().cpu().tolist()
            )
            labels += y.float().tolist()
        self.train(was_training)
        if self.num_labels > 1:
            preds, labels = [int(p) for p in preds], [int(y) for y in labels]
        metrics = glue_metrics(self.task, preds, labels)
        return float(metrics.get(MAIN_METRIC.get(self.task, "accuracy"), 0.0))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        warm = max(1, int(self.cfg.warmup_ratio * self.total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["dev_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.samples_seen = int(checkpoint["samples_seen"])
        self.history = [float(x) for x in checkpoint["dev_history"]]

    def train_dataloader(self) -> DataLoader:
        from lmlab.training import StepSampler

        sampler = StepSampler(len(self.train_items), seed=self.seed, start=self.samples_seen)
        return DataLoader(
            self.train_items, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=self.collate
        )


class DevEvaluation(pl.Callback):
    """Scores the dev set after the last step of every epoch (ceil(train rows / batch size) steps). It runs
    before that step's checkpoint is written (Lightning calls checkpoint callbacks last), so a checkpoint holds
    every dev score up to its step and a resumed run never repeats or loses one."""

    def __init__(self, loader: DataLoader, steps_per_epoch: int):
        self.loader, self.steps_per_epoch = loader, steps_per_epoch

    def on_train_batch_end(self, trainer: pl.Trainer, module: GlueModule, *args: Any) -> None:
        epoch, rest = divmod(trainer.global_step, self.steps_per_epoch)
        if rest == 0 and len(module.history) < epoch:
            with trainer.precision_plugin.val_step_context():
                module.history.append(module.evaluate(self.loader))
            for logger in trainer.loggers:  # one row, under Lightning's step of this step's training loss
                logger.log_metrics({"dev/score": module.history[-1]}, step=trainer.global_step - 1)


def aggregate(per_task_seed_history: dict[str, list[list[float]]]) -> dict:
    """Best epoch per (task, seed), mean/std over seeds per task, average over tasks without RTE."""
    tasks = {}
    for task, histories in per_task_seed_history.items():
        best = [max(h) for h in histories]
        tasks[task] = {
            "best_per_seed": best,
            "mean": statistics.fmean(best),
            "std": statistics.pstdev(best) if len(best) > 1 else 0.0,
        }
    counted = [v["mean"] for t, v in tasks.items() if t not in EXCLUDED_FROM_AVERAGE]
    return {
        "tasks": tasks,
        "average": statistics.fmean(counted) if counted else None,
        "average_excludes": list(EXCLUDED_FROM_AVERAGE),
    }


def finetune_task(
    cfg: GlueConfig, task: str, seed: int, tokenizer, backbone: nn.Module, data: dict, run_dir: Path
) -> list[float]:
    """Fine-tune one (task, seed) in `run_dir` and return the dev score of every epoch. A finished run's scores
    are read back from its `history.json`; an interrupted one resumes from its `checkpoints/last.ckpt`."""
    from lmlab.io import atomic_write
    from lmlab.seed import seed_everything
    from lmlab.training import TrainerOptions, build_trainer, resume_checkpoint

    done = run_dir / "history.json"
    if done.is_file():
        return [float(x) for x in json.loads(done.read_text())["history"]]
    seed_everything(seed)  # the head's initialisation
    n_labels = TASKS[task].num_labels
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    coll = _collate(pad if pad is not None else 0, n_labels == 1)
    steps_per_epoch = math.ceil(len(data["train"]) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    dev = DataLoader(data["dev"], batch_size=cfg.batch_size, collate_fn=coll)
    module = GlueModule(copy.deepcopy(backbone), n_labels, task, cfg, total, data["train"], coll, seed)
    opts = TrainerOptions(
        output_dir=str(run_dir),
        device=cfg.device,
        devices=1,
        max_steps=total,
        checkpoint_every_n_steps=cfg.checkpoint_every_n_steps,
        log_every_n_steps=cfg.log_every_n_steps,
        logger="none",
        progress_bar=False,
        seed=seed,
    )
    trainer = build_trainer(
        opts, run_dir, callbacks=[DevEvaluation(dev, steps_per_epoch)], use_distributed_sampler=False
    )
    trainer.fit(module, ckpt_path=resume_checkpoint(opts, run_dir), weights_only=True)
    with atomic_write(done) as fh:
        json.dump({"task": task, "seed": seed, "history": module.history}, fh)
    if not cfg.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return module.history


# the options a finished (task, seed) run depends on: a rerun into the same folder must use the same values
PROTOCOL_KEYS = (
    "model",
    "learning_rate",
    "batch_size",
    "epochs",
    "warmup_ratio",
    "weight_decay",
    "loss",
    "max_seq_len",
    "data_dir",
    "max_train_samples",
)


def _check_same_protocol(cfg: GlueConfig, root: Path) -> None:
    import yaml
    from lmlab.config import config_to_dict

    saved = root / "config.yaml"
    if not saved.is_file():
        return
    before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    now = config_to_dict(cfg)
    for key in PROTOCOL_KEYS:
        if before.get(key) != now[key]:
            raise LmlabError(
                f"{root} holds GLUE runs made with --{key} {before.get(key)}, not {now[key]}; "
                "give another --output_dir to start afresh"
            )


def _load_backbone(model_dir: str) -> nn.Module:
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(model_dir, weights_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, pickle errors, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise LmlabError(f"cannot load --model {model_dir} ({type(err).__name__}: {first})") from None


def run_glue(cfg: GlueConfig) -> dict:
    from lmlab.config import save_config

    from headless_lm.data import load_tokenizer

    root = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.output).with_suffix("")
    tasks = [normalise_task(t) for t in cfg.tasks]
    _check_same_protocol(cfg, root)
    # every input is read and checked before anything is written
    tokenizer = load_tokenizer(cfg.model)
    pad_choice = "tokenizer pad"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_choice = "eos as pad"
    backbone = _load_backbone(cfg.model)
    data = {}
    for task in tasks:
        data[task] = {}
        for split in ("train", "dev"):
            a, b, y = read_task(
                cfg.data_dir, task, split, cfg.max_train_samples if split == "train" else None
            )
            data[task][split] = list(zip(encode_pairs(tokenizer, a, b, cfg.max_seq_len), y, strict=True))
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "config.yaml")
    histories = {
        t: [finetune_task(cfg, t, s, tokenizer, backbone, data[t], root / t / f"seed{s}") for s in cfg.seeds]
        for t in tasks
    }
    result = aggregate(histories)
    result["per_epoch"] = histories
    result["protocol"] = {
        "loss": cfg.loss,
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.epochs,
        "seeds": cfg.seeds,
        "weight_decay": cfg.weight_decay,
        "pair_separator": "tokenizer sep" if tokenizer.sep_token_id is not None else "eos",
        "padding": pad_choice,
        "mnli_dev": "matched+mismatched concatenated",
    }
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"[headless-lm glue] average (without RTE) {result['average']}; results in {cfg.output}")
    return {"average": result["average"]}
