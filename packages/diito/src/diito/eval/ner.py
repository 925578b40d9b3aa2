"""`diito eval-ner`: CoNLL-style NER fine-tuning with a stock token-classification head (reference run_ner.py):
the first sub-token of each word carries the label (others -100, no label_all_tokens); seqeval entity-level
precision/recall/F1 and token accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lmlab.errors import LmlabError

from diito.config import EvalNerConfig

CONLL2003 = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def read_conll_json(path: str) -> list[tuple[list[str], list[str]]]:
    """Rows with words/tokens and ner/ner_tags (strings, or ints in CoNLL-2003 order); json list or jsonl."""
    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"NER file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8").strip()
        rows = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LmlabError(f"cannot parse {p} as UTF-8 JSON / JSON lines: {err}") from err
    out = []
    for r in rows:
        if not isinstance(r, dict):
            raise LmlabError(f"{p}: every row must be a JSON object with words/tokens and ner/ner_tags")
        words = r.get("words", r.get("tokens"))
        tags = r.get("ner", r.get("ner_tags"))
        if words is None or tags is None or len(words) != len(tags):
            raise LmlabError(f"{p}: every row needs words/tokens and ner/ner_tags of equal length")
        out.append((list(words), [CONLL2003[t] if isinstance(t, int) else str(t) for t in tags]))
    if not out:
        raise LmlabError(f"{p} holds no example")
    return out


def encode(tokenizer, rows, label2id, max_len):
    feats = []
    for words, tags in rows:
        enc = tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=max_len, padding="max_length"
        )
        labels, prev = [], None
        for wid in enc.word_ids():
            labels.append(-100 if wid is None or wid == prev else label2id[tags[wid]])
            prev = wid
        feats.append({**{k: torch.tensor(v) for k, v in enc.items()}, "labels": torch.tensor(labels)})
    return feats


def run_eval_ner(cfg: EvalNerConfig) -> dict:
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from diito.eval.common import device_of, finetune, finish, resume_point
    from diito.loading import load_for_finetuning

    if not cfg.train_file:
        raise LmlabError("--train_file is required")
    train_rows = read_conll_json(cfg.train_file)
    eval_rows = read_conll_json(cfg.validation_file or cfg.train_file)
    if cfg.max_train_samples > 0:
        train_rows = train_rows[: cfg.max_train_samples]
    if cfg.max_eval_samples > 0:
        eval_rows = eval_rows[: cfg.max_eval_samples]
    labels = sorted(
        {t for _, tags in train_rows + eval_rows for t in tags}, key=lambda t: (CONLL2003 + [t]).index(t)
    )
    label2id = {t: i for i, t in enumerate(labels)}
    ckpt = resume_point(cfg)
    from lmlab.seed import seed_everything

    seed_everything(cfg.seed)  # the new head's initialisation depends on the seed, not on what ran before
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    model = load_for_finetuning(
        AutoModelForTokenClassification,
        cfg.model_name_or_path,
        "diito eval-ner",
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
    )
    max_len = min(cfg.max_seq_length, tokenizer.model_max_length)
    finetune(model, encode(tokenizer, train_rows, label2id, max_len), cfg, ckpt)
    feats = encode(tokenizer, eval_rows, label2id, max_len)
    y_true, y_pred = [], []
    dev = device_of(model)
    with torch.no_grad():
        for f, (_, tags) in zip(feats, eval_rows, strict=True):
            logits = model(**{k: v[None].to(dev) for k, v in f.items() if k != "labels"}).logits[0]
            keep = f["labels"] != -100
            pred = [labels[i] for i in logits.argmax(-1)[keep.to(dev)].tolist()]
            y_true.append(tags[: len(pred)])
            y_pred.append(pred)
    result = {
        "model": cfg.model_name_or_path,
        "seed": cfg.seed,
        "precision": precision_score(y_true, y_pred),
        "recall": recall_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred),
        "accuracy": accuracy_score(y_true, y_pred),
        "n_train": len(train_rows),
        "n_eval": len(eval_rows),
    }
    text = (
        f"`{cfg.model_name_or_path}` fine-tuned for NER on `{cfg.train_file}` ({len(train_rows)} sentences, "
        f"seed {cfg.seed}), scored with seqeval (entity level) on {len(eval_rows)} sentences."
    )
    path = finish(cfg, "diito eval-ner", result, text)
    print(f"[diito eval-ner] f1 {result['f1']:.4f} -> {path}")
    return result
