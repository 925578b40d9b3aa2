"""Preprocessing (tokenise, pack into rows of exactly L tokens, save_to_disk) and the packed-row data sets.

Fixes of the reference `preprocess.py`: the remainder of each 100k-document batch is carried over to the next
batch instead of being sliced away (the reference drops a whole batch when its token count is an exact
multiple of L), EOS separates documents (`append_eos`, Pythia's own convention), the shuffle is seeded, and
local files and tokenizer folders work offline.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from lmlab.errors import LmlabError
from torch.utils.data import Dataset as TorchDataset


def pack_documents(
    documents: Iterable[Sequence[int]], max_seq_len: int, eos_id: int | None = None, batch_docs: int = 100_000
) -> Iterator[np.ndarray]:
    """Yield (n, max_seq_len) int arrays of consecutive tokens of `documents` (EOS after each one when
    `eos_id` is given), processed `batch_docs` documents at a time; only the final remainder (< L) is lost."""
    carry = np.zeros(0, dtype=np.int64)
    buffer: list[np.ndarray] = []

    def flush(buf: list[np.ndarray], carry: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        stream = np.concatenate([carry, *buf]) if buf else carry
        n = len(stream) // max_seq_len
        rows = stream[: n * max_seq_len].reshape(n, max_seq_len) if n else None
        return rows, stream[n * max_seq_len :]

    for doc in documents:
        ids = np.asarray(doc, dtype=np.int64)
        if eos_id is not None:
            ids = np.append(ids, eos_id)
        buffer.append(ids)
        if len(buffer) >= batch_docs:
            rows, carry = flush(buffer, carry)
            buffer = []
            if rows is not None:
                yield rows
    rows, carry = flush(buffer, carry)
    if rows is not None:
        yield rows


def documents_of(values: Sequence, source: str, column: str) -> list[str]:
    """The documents of a text column. Empty cells (blank, null, NaN) are dropped with a message saying how
    many (there is nothing to tokenise in them); a cell that is not text is an error naming its row."""
    docs, empty = [], 0
    for row, value in enumerate(values, start=1):
        if value is None or (isinstance(value, float) and value != value):
            empty += 1
        elif not isinstance(value, str):
            raise LmlabError(
                f"{source}, row {row}: column {column!r} holds {type(value).__name__} {value!r}, not text; "
                "fix that row or choose the text column with --text_column"
            )
        elif value.strip():
            docs.append(value)
        else:
            empty += 1
    if empty:
        print(
            f"[headless-lm preprocess] {source}: dropped {empty} of {len(values)} rows with an empty "
            f"{column!r} (nothing to tokenise)",
            file=sys.stderr,
        )
    return docs


def _load_texts(cfg) -> list[str]:
    from lmlab.data import load_corpus

    if cfg.text_files:
        texts: list[str] = []
        for source in cfg.text_files:
            path = Path(source)
            if not path.exists():
                raise LmlabError(f"--text_files {source}: no such file or folder")
            if path.suffix == ".parquet":
                import pandas as pd

                frame = pd.read_parquet(path)
                if cfg.text_column not in frame:
                    raise LmlabError(
                        f"{source} has no column {cfg.text_column!r}; columns: {list(frame.columns)}"
                    )
                values = frame[cfg.text_column].tolist()
            else:  # .csv/.tsv through lmlab's strict table reader: a ragged row is an error naming its line
                values = load_corpus(path, text_column=cfg.text_column, documents=cfg.documents)[
                    cfg.text_column
                ]
                _warn_one_document(path, values, cfg.documents)
            texts += documents_of(values, source, cfg.text_column)
    elif cfg.dataset_name:
        import datasets

        try:
            ds = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config, split="train")
        except Exception as err:  # offline or a gone hub source (the reference's the_pile_openwebtext2)
            raise LmlabError(
                f"cannot load hub data set {cfg.dataset_name!r} ({type(err).__name__}); "
                "give local files with --text_files"
            ) from None
        if cfg.text_column not in ds.column_names:
            raise LmlabError(
                f"{cfg.dataset_name} has no column {cfg.text_column!r}; its columns are {ds.column_names}"
            )
        texts = documents_of(ds[cfg.text_column], cfg.dataset_name, cfg.text_column)
    else:
        raise LmlabError("give --text_files (local files) or --dataset_name (hub, online)")
    if not texts:
        raise LmlabError("the input holds no text documents; check --text_files and --text_column")
    return texts


def _warn_one_document(path: Path, values: Sequence, documents: str) -> None:
    """Say so when a text file of several lines became a single document (no blank line between paragraphs)."""
    from lmlab.data import TEXT_SUFFIXES

    if documents != "paragraph" or path.suffix.lower() not in TEXT_SUFFIXES or len(values) != 1:
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        lines = sum(1 for line in fh if line.strip())
    if lines > 1:
        print(
            f"[headless-lm preprocess] warning: {path} has no blank line, so its {lines} lines are one document; "
            "pass --documents line if each line is a document",
            file=sys.stderr,
        )


def document_separator(tokenizer, append_eos: bool) -> int | None:
    """The token put after each document: EOS, or SEP for tokenizers without EOS (BERT's), None when
    `append_eos` is off. Says which when it is not EOS."""
    if not append_eos:
        return None
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    if tokenizer.sep_token_id is not None:
        print(
            f"[headless-lm preprocess] the tokenizer has no EOS token: documents end with its SEP token "
            f"{tokenizer.sep_token!r} (id {tokenizer.sep_token_id})",
            file=sys.stderr,
        )
        return int(tokenizer.sep_token_id)
    raise LmlabError(
        "the tokenizer has neither an EOS nor a SEP token to end documents; pass --append_eos false"
    )


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:
        raise LmlabError(
            f"cannot load tokenizer {name_or_path!r} ({type(err).__name__}); give a local tokenizer folder"
        ) from None


def preprocess(cfg) -> dict:
    """The `preprocess` subcommand: writes a DatasetDict with a `packed` column (and `validation` if asked)."""
    import datasets

    tokenizer = load_tokenizer(cfg.hf_tokenizer)
    texts = _load_texts(cfg)
    eos = document_separator(tokenizer, cfg.append_eos)

    def docs() -> Iterator[list[int]]:
        for start in range(0, len(texts), 1000):
            enc = tokenizer(
                texts[start : start + 1000], add_special_tokens=False, return_attention_mask=False
            )
            yield from enc["input_ids"]

    chunks = list(pack_documents(docs(), cfg.max_seq_len, eos, cfg.batch_docs))
    if not chunks:
        raise LmlabError(f"the corpus has fewer than max_seq_len={cfg.max_seq_len} tokens; use more text")
    rows = np.concatenate(chunks)
    order = np.random.default_rng(cfg.seed).permutation(len(rows))
    rows = rows[order]
    dtype = np.int32 if len(tokenizer) < 2**31 else np.int64
    n_val = int(round(cfg.val_fraction * len(rows)))
    if cfg.val_fraction > 0:
        n_val = max(1, n_val)
        if n_val >= len(rows):
            raise LmlabError(f"only {len(rows)} rows: too few for --val_fraction {cfg.val_fraction}")
    splits = {"train": rows[: len(rows) - n_val]}
    if n_val:
        splits["validation"] = rows[len(rows) - n_val :]
    features = datasets.Features(
        {"packed": datasets.Sequence(datasets.Value("int32" if dtype == np.int32 else "int64"))}
    )
    dd = datasets.DatasetDict(
        {
            k: datasets.Dataset.from_dict({"packed": v.astype(dtype).tolist()}, features=features)
            for k, v in splits.items()
        }
    )
    dd.save_to_disk(cfg.output, num_proc=cfg.num_proc)
    summary = {
        "output": cfg.output,
        "documents": len(texts),
        **{f"{k}_rows": len(v) for k, v in splits.items()},
    }
    print(f"[headless-lm preprocess] wrote {summary}")
    return summary


class PackedRows(TorchDataset):
    """Rows of a packed data set as LongTensors, each split into `length`-token sequences when longer (the
    reference's MLM reshape of 2048-token rows into 16 rows of 128)."""

    def __init__(self, dataset, column: str, length: int | None = None):
        if column not in dataset.column_names:
            raise LmlabError(f"data set has no column {column!r}; its columns are {dataset.column_names}")
        if len(dataset) == 0:
            raise LmlabError("the data set is empty")
        self.data = dataset.with_format("numpy", columns=[column])
        self.column = column
        row_len = len(dataset[0][column])
        self.length = length or row_len
        if self.length > row_len:
            raise LmlabError(f"rows have {row_len} tokens, fewer than the sequence length {self.length}")
        self.per_row = row_len // self.length

    def __len__(self) -> int:
        return len(self.data) * self.per_row

    def __getitem__(self, i: int) -> torch.Tensor:
        row, chunk = divmod(i, self.per_row)
        ids = self.data[row][self.column]
        return torch.as_tensor(
            np.asarray(ids[chunk * self.length : (chunk + 1) * self.length], dtype=np.int64)
        )


def collate(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows)


def load_packed(path: str, column: str = "packed", valid_fraction: float = 0.0001):
    """(train, validation) `datasets.Dataset`s of a save_to_disk folder; without a validation split the last
    `valid_fraction` of the rows (at least one) is held out, as in the reference."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise LmlabError(f"--dataset {path}: no such folder; run `headless-lm preprocess` first")
    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as err:
        raise LmlabError(f"--dataset {path} is not a save_to_disk data set ({type(err).__name__})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise LmlabError(f"--dataset {path} has no train split (splits: {list(loaded)})")
        train = loaded["train"]
        valid = loaded.get("validation")
    else:
        train, valid = loaded, None
    if len(train) == 0:
        raise LmlabError(f"--dataset {path}: the train split is empty")
    if valid is None:
        n_val = max(1, int(len(train) * valid_fraction))
        if len(train) < 2:
            valid = train
        else:
            valid = train.select(range(len(train) - n_val, len(train)))
            train = train.select(range(len(train) - n_val))
    return train, valid
