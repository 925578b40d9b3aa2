"""`binarize`, `combine`, `token-counts` subcommands."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from lmlab.errors import LmlabError

from diito.config import BinarizeConfig, CombineConfig, TokenCountsConfig
from diito.data.binarized import (
    from_sequences,
    load_binarized,
    load_legacy_pickle,
    save_binarized,
    save_token_counts,
    token_counts,
)

SPECIAL_NAMES = ("pad", "cls", "sep", "mask", "unk", "bos", "eos")


def tokenizer_specials(tokenizer) -> dict[str, int]:
    out = {}
    for name in SPECIAL_NAMES:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is not None:
            out[name] = int(value)
    return out


def bert_specials() -> dict[str, int]:
    """bert-base-uncased's special ids (for reference pickles and the shipped Wikipedia id sample)."""
    return {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def binarize_texts(texts: list[str], tokenizer, num_proc: int = 1) -> list[np.ndarray]:
    """[CLS] ids [SEP] per text (BERT/RoBERTa cls/sep, GPT-2 bos/eos); no truncation."""
    import datasets

    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if first is None or last is None:
        raise LmlabError("the tokenizer has neither cls/sep nor bos/eos tokens to frame sequences with")
    ds = datasets.Dataset.from_dict({"text": texts})

    def enc(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"ids": [[first, *x, last] for x in ids]}

    ds = ds.map(enc, batched=True, num_proc=num_proc if num_proc > 1 else None, remove_columns=["text"])
    return [np.asarray(x, dtype=np.int64) for x in ds["ids"]]


def checked_texts(values: list, column: str, source: str) -> list[str]:
    """The text column as strings. A value that is not text (a number, a JSON NaN, a list) is an error naming
    its row; empty rows (empty cell, JSON null) carry no sequence and are dropped, saying how many."""
    texts, empty = [], []
    for row, value in enumerate(values, start=1):
        if value is None or (isinstance(value, str) and not value.strip()):
            empty.append(row)
        elif isinstance(value, str):
            texts.append(value)
        else:
            raise LmlabError(
                f"{source}, row {row}: column {column!r} holds {type(value).__name__} {value!r}, not text; "
                "fix or remove that row"
            )
    if empty:
        print(
            f"[diito binarize] dropped {len(empty)} of {len(values)} rows whose {column!r} is empty "
            f"(first: row {empty[0]})",
            file=sys.stderr,
        )
    return texts


def run_binarize(cfg: BinarizeConfig) -> dict:
    rng = np.random.default_rng(cfg.seed)
    if cfg.import_legacy_pickle:
        seqs = load_legacy_pickle(cfg.import_legacy_pickle)
        if not all(isinstance(s, np.ndarray) for s in seqs):
            raise LmlabError(
                f"{cfg.import_legacy_pickle} is not a list of numpy arrays (a binarized reference file)"
            )
        data = from_sequences(seqs, cfg.vocab_size, bert_specials(), "legacy")
        out = Path(str(Path(cfg.import_legacy_pickle).with_suffix("")) + ".npz")
    else:
        from lmlab.data import load_corpus
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_name)
        corpus = load_corpus(cfg.input, text_column=cfg.field_name, split=cfg.split)
        values = corpus[cfg.field_name]
        if cfg.max_parsing_example != -1:
            values = values[: cfg.max_parsing_example]
        texts = checked_texts(list(values), cfg.field_name, cfg.input)
        seqs = binarize_texts(texts, tokenizer, cfg.preprocessing_num_workers)
        seqs = [seqs[i] for i in rng.permutation(len(seqs))]
        name = Path(cfg.tokenizer_name.rstrip("/")).name
        data = from_sequences(seqs, len(tokenizer), tokenizer_specials(tokenizer), name)
        out = Path(f"{cfg.dump_file}.{cfg.split}.{name}.npz")
    if len(data) == 0:
        raise LmlabError("no sequence to binarize; the input is empty")
    save_binarized(data, out)
    print(f"[diito binarize] {len(data)} sequences, {len(data.ids)} tokens -> {out}")
    return {"path": str(out), "sequences": len(data), "tokens": int(len(data.ids))}


def run_combine(cfg: CombineConfig) -> dict:
    parts = [load_binarized(p) for p in cfg.inputs]
    if len({p.vocab_size for p in parts}) != 1 or len({tuple(sorted(p.special.items())) for p in parts}) != 1:
        raise LmlabError(
            "the binarized files were made with different tokenizers; combine files of one tokenizer"
        )
    seqs = [s for p in parts for s in p.sequences()]
    order = np.random.default_rng(cfg.seed).permutation(len(seqs))
    data = from_sequences(
        [seqs[i] for i in order], parts[0].vocab_size, parts[0].special, parts[0].tokenizer_name
    )
    save_binarized(data, cfg.output)
    print(f"[diito combine] {len(data)} sequences -> {cfg.output}")
    return {"path": cfg.output, "sequences": len(data)}


def run_token_counts(cfg: TokenCountsConfig) -> dict:
    data = load_binarized(cfg.data_file)
    vocab = cfg.vocab_size if cfg.vocab_size != -1 else data.vocab_size
    if int(data.ids.max()) >= vocab:
        raise LmlabError(f"ids up to {int(data.ids.max())} do not fit --vocab_size {vocab}")
    counts = token_counts(data, vocab)
    save_token_counts(counts, cfg.token_counts_dump)
    print(f"[diito token-counts] {int((counts > 0).sum())} distinct ids -> {cfg.token_counts_dump}")
    return {"path": cfg.token_counts_dump}
