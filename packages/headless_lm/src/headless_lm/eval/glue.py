"""GLUE fine-tuning protocol of the paper (§4.1, App. E): AdamW, lr 1e-5, batch 32, constant LR after 10% linear
warm-up, weight decay 0 (Table 14; 0.01 in the text and the reference script: --weight_decay), max length 128,
dropout 0.1 + linear head on the first token's final hidden state, MSE for STS-B, balanced cross-entropy,
best epoch over 10, mean over 3 seeds; RTE fine-tuned but excluded from the average; MNLI scored on matched and
mismatched dev concatenated.

Fixes of the reference (`glue_finetuning.py`, which does not run): attention masks are passed, sentence pairs
are joined with the tokenizer's separator (EOS for Pythia-style tokenizers without one, instead of nothing),
a pad token is set explicitly, CE is applied to logits (not to softmax probabilities), training data shuffled.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lmlab.errors import LmlabError
from torch import nn
from torch.utils.data import DataLoader

from headless_lm.config import ALL_TASKS, GlueConfig
from headless_lm.losses import balanced_cross_entropy

EXCLUDED_FROM_AVERAGE = ("rte",)
# task -> (train file, dev files, text columns, label column, number of labels; 1 = regression)
TASK_FORMATS = {
    "cola": ("train.tsv", ("dev.tsv",), (3, None), 1, 2),
    "sst2": ("train.tsv", ("dev.tsv",), ("sentence", None), "label", 2),
    "mrpc": ("train.tsv", ("dev.tsv",), ("#1 String", "#2 String"), "Quality", 2),
    "stsb": ("train.tsv", ("dev.tsv",), ("sentence1", "sentence2"), "score", 1),
    "qqp": ("train.tsv", ("dev.tsv",), ("question1", "question2"), "is_duplicate", 2),
    "mnli": (
        "train.tsv",
        ("dev_matched.tsv", "dev_mismatched.tsv"),
        ("sentence1", "sentence2"),
        "gold_label",
        3,
    ),
    "qnli": ("train.tsv", ("dev.tsv",), ("question", "sentence"), "label", 2),
    "rte": ("train.tsv", ("dev.tsv",), ("sentence1", "sentence2"), "label", 2),
}
FOLDERS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
}
LABEL_MAPS = {
    "mnli": {"entailment": 0, "neutral": 1, "contradiction": 2},
    "qnli": {"entailment": 0, "not_entailment": 1},
    "rte": {"entailment": 0, "not_entailment": 1},
}
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "spearmanr"}


def normalise_task(name: str) -> str:
    task = name.lower().replace("-", "").replace("_", "")
    if task not in TASK_FORMATS:
        raise LmlabError(f"unknown GLUE task {name!r}; choose from {', '.join(ALL_TASKS)}")
    return task


def _task_dir(data_dir: Path, task: str) -> Path:
    for cand in (FOLDERS[task], task, FOLDERS[task].lower(), FOLDERS[task].replace("-", "")):
        if (data_dir / cand).is_dir():
            return data_dir / cand
    raise LmlabError(
        f"no folder for GLUE task {task} under {data_dir} (expected {FOLDERS[task]}/train.tsv ...)"
    )


def read_task(data_dir: str | Path, task: str, split: str, max_samples: int | None = None):
    """(texts_a, texts_b | None, labels) of a GLUE task split ("train" or "dev")."""
    import pandas as pd

    task = normalise_task(task)
    train_file, dev_files, (col_a, col_b), label_col, _ = TASK_FORMATS[task]
    folder = _task_dir(Path(data_dir), task)
    files = (train_file,) if split == "train" else dev_files
    frames = []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise LmlabError(f"GLUE file {path} is missing")
        header = None if task == "cola" else 0
        frame = pd.read_csv(path, sep="\t", quoting=3, header=header, dtype=str, keep_default_na=False)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    for col in (col_a, col_b, label_col):
        if col is not None and col not in frame.columns:
            raise LmlabError(f"{folder}: column {col!r} missing (columns: {list(frame.columns)})")
    if max_samples:
        frame = frame.iloc[:max_samples]
    if len(frame) == 0:
        raise LmlabError(f"{folder} {split} split is empty")
    a = frame[col_a].astype(str).tolist()
    b = frame[col_b].astype(str).tolist() if col_b is not None else None
    raw = frame[label_col].tolist()
    if TASK_FORMATS[task][4] == 1:
        labels = [float(x) for x in raw]
    else:
        mapping = LABEL_MAPS.get(task)
        labels = [mapping[x] if mapping else int(x) for x in raw]
    return a, b, labels


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
    """Backbone + dropout 0.1 + linear on the first token's last hidden state."""

    def __init__(
        self,
        model_dir: str,
        num_labels: int,
        task: str,
        lr: float,
        weight_decay: float,
        warmup_ratio: float,
        total_steps: int,
        loss: str,
    ):
        super().__init__()
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(model_dir)
        dim = self.backbone.get_input_embeddings().weight.shape[1]
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(dim, num_labels)
        self.task, self.num_labels, self.loss_name = task, num_labels, loss
        self.lr, self.wd, self.warmup, self.total = lr, weight_decay, warmup_ratio, total_steps
        self.history: list[float] = []
        self._preds: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def forward(self, ids, mask):
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return self.head(self.dropout(hidden))

    def _loss(self, logits, labels):
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels)
        if self.loss_name == "balanced":
            return balanced_cross_entropy(logits, labels)
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, batch, _):
        ids, mask, labels = batch
        loss = self._loss(self(ids, mask), labels)
        self.log("train/loss", loss, batch_size=len(labels))
        return loss

    def validation_step(self, batch, _):
        ids, mask, labels = batch
        logits = self(ids, mask)
        self._preds.append(logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1))
        self._labels.append(labels)

    def on_validation_epoch_end(self):
        from lmlab.metrics import glue_metrics

        preds = torch.cat(self._preds).float().cpu().tolist()
        labels = torch.cat(self._labels).float().cpu().tolist()
        if self.num_labels > 1:
            preds, labels = [int(p) for p in preds], [int(y) for y in labels]
        metrics = glue_metrics(self.task, preds, labels)
        self.history.append(float(metrics.get(MAIN_METRIC.get(self.task, "accuracy"), 0.0)))
        self._preds, self._labels = [], []

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.wd)
        warm = max(1, int(self.warmup * self.total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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


def finetune_task(cfg: GlueConfig, task: str, seed: int, tokenizer) -> list[float]:
    from lmlab.device import resolve_accelerator, resolve_precision
    from lmlab.seed import seed_everything

    seed_everything(seed)
    n_labels = TASK_FORMATS[task][4]
    data = {}
    for split in ("train", "dev"):
        a, b, y = read_task(cfg.data_dir, task, split, cfg.max_train_samples if split == "train" else None)
        data[split] = list(zip(encode_pairs(tokenizer, a, b, cfg.max_seq_len), y, strict=True))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    coll = _collate(pad if pad is not None else 0, n_labels == 1)
    train = DataLoader(
        data["train"],
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=coll,
        generator=torch.Generator().manual_seed(seed),
    )
    dev = DataLoader(data["dev"], batch_size=cfg.batch_size, collate_fn=coll)
    total = cfg.epochs * len(train)
    module = GlueModule(
        cfg.model, n_labels, task, cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio, total, cfg.loss
    )
    accel = resolve_accelerator(cfg.device)
    trainer = pl.Trainer(
        accelerator=accel,
        devices=1,
        precision=resolve_precision("auto", accel),
        max_epochs=cfg.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train, dev)
    return module.history


def run_glue(cfg: GlueConfig) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    pad_choice = "tokenizer pad"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_choice = "eos as pad"
    tasks = [normalise_task(t) for t in cfg.tasks]
    histories = {t: [finetune_task(cfg, t, s, tokenizer) for s in cfg.seeds] for t in tasks}
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
