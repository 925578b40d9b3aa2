"""`diito eval-glue`: fine-tune a student with a stock sequence-classification head on a GLUE task read from
local files or folders by `lmlab.glue` (GLUE .tsv as distributed, or csv/jsonl with the HF column names) and
close the run folder with results.json, report.md (the task's scores) and DONE."""

from __future__ import annotations

import torch
from lmlab.errors import LmlabError
from torch.utils.data import DataLoader

from diito.config import EvalGlueConfig


def read_split(path: str, task: str, split: str) -> tuple[list[tuple[str, ...]], list]:
    """(texts, labels) of a labelled split, read by lmlab's one GLUE reader (strict tables: a ragged row is an
    error naming file and line)."""
    from lmlab.glue import read_glue

    data = read_glue(path, task, split)
    if data.labels is None:
        raise LmlabError(f"{data.source} has no labels (a test split?); give a labelled {split} file")
    texts = (
        list(zip(data.texts_a, data.texts_b, strict=True)) if data.texts_b else [(t,) for t in data.texts_a]
    )
    return texts, data.labels


def _encode(tokenizer, texts, labels, max_len, regression):
    enc = tokenizer(
        *zip(*texts, strict=True),
        truncation=True,
        max_length=max_len,
        padding="max_length",
        return_tensors="pt",
    )
    y = torch.tensor(labels, dtype=torch.float if regression else torch.long)
    return [{**{k: v[i] for k, v in enc.items()}, "labels": y[i]} for i in range(len(labels))]


def run_eval_glue(cfg: EvalGlueConfig) -> dict:
    from lmlab.glue import TASKS, normalise_task
    from lmlab.metrics import glue_metrics
    from lmlab.seed import seed_everything
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from diito.eval.common import device_of, finetune, finish, resume_point
    from diito.loading import load_for_finetuning

    task = normalise_task(cfg.task_name)
    if not cfg.train_file or not cfg.validation_file:
        raise LmlabError("--train_file and --validation_file are required (local GLUE files or folders)")
    n_labels = TASKS[task].num_labels
    tr_x, tr_y = read_split(cfg.train_file, task, "train")
    ev_x, ev_y = read_split(cfg.validation_file, task, "validation")
    ckpt = resume_point(cfg)
    seed_everything(cfg.seed)  # the new head's initialisation depends on the seed, not on what ran before
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    model = load_for_finetuning(
        AutoModelForSequenceClassification, cfg.model_name_or_path, "diito eval-glue", num_labels=n_labels
    )
    if cfg.max_train_samples > 0:
        tr_x, tr_y = tr_x[: cfg.max_train_samples], tr_y[: cfg.max_train_samples]
    if cfg.max_eval_samples > 0:
        ev_x, ev_y = ev_x[: cfg.max_eval_samples], ev_y[: cfg.max_eval_samples]
    train = _encode(tokenizer, tr_x, tr_y, cfg.max_seq_length, n_labels == 1)
    evals = _encode(tokenizer, ev_x, ev_y, cfg.max_seq_length, n_labels == 1)
    finetune(model, train, cfg, ckpt)
    preds = []
    dev = device_of(model)
    with torch.no_grad():
        for batch in DataLoader(evals, batch_size=cfg.per_device_eval_batch_size):
            batch = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits.float()
            preds += (logits[:, 0] if n_labels == 1 else logits.argmax(-1)).tolist()
    metrics = glue_metrics(task, preds, ev_y)
    metrics["score"] = sum(metrics.values()) / len(metrics)  # HF's combined_score for MRPC/QQP/STS-B
    result = {
        "task": task,
        "model": cfg.model_name_or_path,
        "seed": cfg.seed,
        "n_train": len(train),
        "n_eval": len(evals),
        **metrics,
    }
    text = (
        f"`{cfg.model_name_or_path}` fine-tuned on GLUE {task} ({len(train)} training examples, "
        f"{cfg.num_train_epochs:g} epochs, seed {cfg.seed}), scored on {len(evals)} validation examples; `score` "
        "is the mean of the task's metrics."
    )
    path = finish(cfg, f"diito eval-glue: {task}", result, text)
    print(f"[diito eval-glue] {task}: {metrics} -> {path}")
    return result
