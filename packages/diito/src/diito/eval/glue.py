"""`diito eval-glue`: fine-tune a student with a stock sequence-classification head on a GLUE task read from
local files (GLUE .tsv as distributed, or csv/jsonl with the HF column names) and write results.json."""

from __future__ import annotations

from pathlib import Path

import torch
from lmlab.errors import LmlabError
from torch.utils.data import DataLoader

from diito.config import EvalGlueConfig

# task -> (text columns in HF naming, label column, number of labels (1 = regression), GLUE-tsv column names)
TASKS = {
    "cola": (("sentence",), "label", 2, None),
    "sst2": (("sentence",), "label", 2, None),
    "mrpc": (
        ("sentence1", "sentence2"),
        "label",
        2,
        {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
    ),
    "qqp": (("question1", "question2"), "label", 2, {"is_duplicate": "label"}),
    "stsb": (("sentence1", "sentence2"), "label", 1, {"score": "label"}),
    "mnli": (
        ("premise", "hypothesis"),
        "label",
        3,
        {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
    ),
    "qnli": (("question", "sentence"), "label", 2, None),
    "rte": (("sentence1", "sentence2"), "label", 2, None),
    "wnli": (("sentence1", "sentence2"), "label", 2, None),
}
LABEL_NAMES = {
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
}


def read_task(path: str, task: str) -> tuple[list[tuple[str, ...]], list]:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"GLUE file {p} does not exist")
    cols, label_col, n_labels, rename = TASKS[task]
    if p.suffix == ".tsv":
        if task == "cola":
            df = pd.read_csv(
                p, sep="\t", header=None, quoting=3, names=["source", "label", "orig", "sentence"]
            )
        else:
            df = pd.read_csv(p, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    elif p.suffix == ".csv":
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    else:
        df = pd.read_json(p, lines=p.suffix == ".jsonl", dtype=False)
    df = df.rename(columns=rename or {})
    missing = [c for c in (*cols, label_col) if c not in df.columns]
    if missing:
        raise LmlabError(f"{p} lacks columns {missing} for task {task}; found {list(df.columns)}")
    texts = list(zip(*(df[c].astype(str).tolist() for c in cols), strict=True))
    raw = df[label_col].tolist()
    if n_labels == 1:
        labels = [float(x) for x in raw]
    elif task in LABEL_NAMES and not str(raw[0]).lstrip("-").isdigit():
        labels = [LABEL_NAMES[task].index(str(x)) for x in raw]
    else:
        labels = [int(x) for x in raw]
    return texts, labels


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
    from lmlab.io import write_json
    from lmlab.metrics import glue_metrics
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from diito.eval.common import device_of, finetune

    task = cfg.task_name.lower().replace("-", "")
    if task not in TASKS:
        raise LmlabError(f"--task_name must be one of {', '.join(TASKS)}, got {cfg.task_name!r}")
    if not cfg.train_file or not cfg.validation_file:
        raise LmlabError("--train_file and --validation_file are required (local GLUE files)")
    _, _, n_labels, _ = TASKS[task]
    from lmlab.seed import seed_everything

    seed_everything(cfg.seed)  # the new head's initialisation depends on the seed, not on what ran before
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.model_name_or_path, num_labels=n_labels)
    tr_x, tr_y = read_task(cfg.train_file, task)
    ev_x, ev_y = read_task(cfg.validation_file, task)
    if cfg.max_train_samples > 0:
        tr_x, tr_y = tr_x[: cfg.max_train_samples], tr_y[: cfg.max_train_samples]
    if cfg.max_eval_samples > 0:
        ev_x, ev_y = ev_x[: cfg.max_eval_samples], ev_y[: cfg.max_eval_samples]
    train = _encode(tokenizer, tr_x, tr_y, cfg.max_seq_length, n_labels == 1)
    evals = _encode(tokenizer, ev_x, ev_y, cfg.max_seq_length, n_labels == 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.per_device_train_batch_size, shuffle=True, generator=gen)
    finetune(model, loader, cfg)
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
    write_json(Path(cfg.output_dir) / "results.json", result)
    print(f"[diito eval-glue] {task}: {metrics} -> {Path(cfg.output_dir) / 'results.json'}")
    return result
