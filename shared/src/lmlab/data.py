"""Corpora into `datasets.Dataset`: text, JSONL, CSV/TSV files, folders of them, `save_to_disk` folders, hub
names (online only); tokenisation into fixed-length blocks; environment folders; deterministic splits.

Every failure names the file and the fix, as an `LmlabError`.
"""

from __future__ import annotations

import csv
import os
from importlib import resources
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from lmlab.errors import LmlabError

TEXT_SUFFIXES = (".txt", ".text", ".raw")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = (".jsonl", ".json")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + tuple(TABLE_SUFFIXES) + JSON_SUFFIXES


def sample_path(relative: str) -> Path:
    """Path of a real data sample shipped with lmlab (see `lmlab/samples/SOURCES.md`), e.g.
    `sample_path("squad/sample.json")`."""
    path = Path(str(resources.files("lmlab") / "samples" / relative))
    if not path.exists():
        raise LmlabError(f"no shipped sample {relative!r}; see {path.parent} and lmlab/samples/SOURCES.md")
    return path


def read_table(
    path: str | os.PathLike,
    required_columns: tuple[str, ...] = (),
    non_empty: tuple[str, ...] = (),
    sep: str | None = None,
    header: bool = True,
):
    """Read a CSV (standard quoting) or TSV (no quoting, as GLUE ships it) strictly into a DataFrame of strings.

    Every row must have as many fields as the header: a row with one extra or one missing field is an error
    naming the file and its line (pandas would shift the columns or pad with NaN instead). Cells stay strings
    (an empty cell is "", never NaN or "nan"); the `non_empty` columns must have text in every row. With
    `header=False` the columns are numbered 0, 1, ... and every row must have the first row's width.
    """
    import pandas as pd

    path = Path(path)
    if sep is None:
        sep = TABLE_SUFFIXES.get(path.suffix.lower(), ",")
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=sep, quoting=quoting, strict=True)
            rows, lines = [], []
            for row in reader:
                if row:
                    rows.append(row)
                    lines.append(reader.line_num)
    except OSError as err:
        raise LmlabError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise LmlabError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from err
    except csv.Error as err:
        raise LmlabError(f"cannot parse {path}: {err}") from err
    if not rows:
        raise LmlabError(f"{path} is empty; give a table with a header and at least one row")
    columns = rows[0] if header else list(range(len(rows[0])))
    body, body_lines = (rows[1:], lines[1:]) if header else (rows, lines)
    if header and len(set(columns)) != len(columns):
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        raise LmlabError(
            f"{path}: the header names column {duplicated[0]!r} twice; give each column one name"
        )
    for row, line in zip(body, body_lines, strict=True):
        if len(row) != len(columns):
            raise LmlabError(
                f"{path}, line {line}: {len(row)} fields where the header has {len(columns)}; "
                f"fix or remove that row (a stray {'tab' if sep == chr(9) else 'comma or quote'} is the usual cause)"
            )
    missing = [c for c in (*required_columns, *non_empty) if c not in columns]
    if missing:
        raise LmlabError(f"{path} has no column {missing[0]!r}; its columns are {columns}")
    frame = pd.DataFrame(body, columns=columns, dtype=str)
    for column in non_empty:
        empty = frame.index[frame[column].str.strip() == ""]
        if len(empty):
            raise LmlabError(
                f"{path}, line {body_lines[empty[0]]}: column {column!r} is empty ({len(empty)} such row(s)); "
                "fill or remove them"
            )
    return frame


def _read_text_file(path: Path, documents: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LmlabError(f"cannot read {path}: {err}") from err
    if documents == "line":
        docs = [ln.strip() for ln in text.splitlines()]
    elif documents == "paragraph":
        docs = [" ".join(block.split()) for block in text.replace("\r\n", "\n").split("\n\n")]
    else:
        raise LmlabError(f"documents must be 'line' or 'paragraph', got {documents!r}")
    return [d for d in docs if d]


def _load_file(path: Path, text_column: str, documents: str) -> Dataset:
    suffix = path.suffix.lower()
    if suffix == ".gz" and Path(path.stem).suffix.lower() in JSON_SUFFIXES:
        suffix = Path(path.stem).suffix.lower()  # datasets reads gzipped JSON lines as they are
    if path.stat().st_size == 0:
        raise LmlabError(f"{path} is empty; give a file with at least one document")
    if suffix in TEXT_SUFFIXES:
        docs = _read_text_file(path, documents)
        if not docs:
            raise LmlabError(f"{path} holds no non-empty line; give a file with at least one document")
        return Dataset.from_dict({text_column: docs})
    if suffix in TABLE_SUFFIXES:
        return Dataset.from_pandas(read_table(path), preserve_index=False)
    if suffix in JSON_SUFFIXES:
        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a bar per small file is noise; long steps (map) keep theirs
        try:
            return datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as err:  # datasets wraps parser errors in several types
            raise LmlabError(f"cannot parse {path} as JSON lines: {err}") from err
        finally:
            if was_enabled:
                datasets.enable_progress_bars()
    raise LmlabError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def load_corpus(
    source: str | os.PathLike,
    text_column: str = "text",
    split: str = "train",
    documents: str = "line",
    required_columns: tuple[str, ...] | None = None,
) -> Dataset:
    """Load a corpus into a `Dataset`.

    `source` is a file (`.txt`: one document per line, or blank-line separated with `documents="paragraph"`;
    `.jsonl`/`.json` (also gzipped); `.csv` with standard quoting, `.tsv` read without quoting), a folder of such files (concatenated in name order),
    a folder written by `save_to_disk` (a `DatasetDict` gives its `split`), or a hub name (needs network).
    `required_columns` (default: `text_column`) must be present.
    """
    path = Path(source)
    if path.is_file():
        data = _load_file(path, text_column, documents)
    elif path.is_dir():
        data = _load_folder(path, text_column, split, documents)
    elif os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.sep in str(source) or path.suffix:
        raise LmlabError(f"{source}: no such file or folder (hub data set names need network access)")
    else:
        try:
            data = datasets.load_dataset(str(source), split=split)
        except Exception as err:
            raise LmlabError(f"cannot load data set {source!r} from the hub: {err}") from err
    if len(data) == 0:
        raise LmlabError(f"{source} holds no rows; give a data set with at least one example")
    needed = required_columns if required_columns is not None else (text_column,)
    missing = [c for c in needed if c not in data.column_names]
    if missing:
        raise LmlabError(f"{source} has no column {missing[0]!r}; its columns are {data.column_names}")
    return data


def _load_folder(path: Path, text_column: str, split: str, documents: str) -> Dataset:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise LmlabError(f"{path} has no split {split!r}; its splits are {list(loaded)}")
            return loaded[split]
        return loaded
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        raise LmlabError(f"{path} holds no data file; put {', '.join(SUPPORTED_SUFFIXES)} files in it")
    parts = [_load_file(f, text_column, documents) for f in files]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def load_environments(
    folder: str | os.PathLike, text_column: str = "text", documents: str = "line"
) -> dict[str, Dataset]:
    """One `Dataset` per data file in `folder`, keyed by the file's stem (sorted by name).

    An empty or unreadable environment file is an error, not skipped.
    """
    path = Path(folder)
    if not path.is_dir():
        raise LmlabError(f"{folder}: not a folder; give a folder with one text file per environment")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
    if not files:
        raise LmlabError(
            f"{folder} holds no environment file; put one {'/'.join(SUPPORTED_SUFFIXES)} file per environment in it"
        )
    envs = {}
    for f in files:
        if f.stem in envs:
            raise LmlabError(f"{folder}: two files give environment {f.stem!r}; rename one")
        envs[f.stem] = load_corpus(f, text_column=text_column, documents=documents)
    return envs


def tokenize_and_group(
    dataset: Dataset,
    tokenizer,
    block_size: int,
    text_column: str = "text",
    line_by_line: bool = False,
    num_proc: int | None = None,
    add_special_tokens: bool = True,
) -> Dataset:
    """Tokenise `dataset[text_column]` into rows of `input_ids`.

    Grouped (default): all documents concatenated and cut into blocks of exactly `block_size` tokens (the
    remainder dropped). Line by line: one row per document, truncated to `block_size`, not padded.
    """
    if block_size < 2:
        raise LmlabError(f"block_size must be at least 2, got {block_size}")
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 1e9 and block_size > limit:
        raise LmlabError(f"block_size {block_size} is longer than the tokenizer's model_max_length {limit}")
    if text_column not in dataset.column_names:
        raise LmlabError(f"data has no column {text_column!r}; its columns are {dataset.column_names}")
    cols = dataset.column_names

    if line_by_line:

        def encode(batch):
            enc = tokenizer(
                batch[text_column],
                truncation=True,
                max_length=block_size,
                add_special_tokens=add_special_tokens,
                return_attention_mask=False,
            )
            return {"input_ids": enc["input_ids"]}

        return dataset.map(encode, batched=True, remove_columns=cols, num_proc=num_proc, desc="tokenising")

    def encode_and_pack(batch):
        # whole documents may exceed model_max_length here; they are cut into blocks below, so no warning
        enc = tokenizer(
            batch[text_column],
            add_special_tokens=add_special_tokens,
            return_attention_mask=False,
            verbose=False,
        )
        flat = [t for ids in enc["input_ids"] for t in ids]
        n = (len(flat) // block_size) * block_size
        return {"input_ids": [flat[i : i + block_size] for i in range(0, n, block_size)]}

    out = dataset.map(
        encode_and_pack, batched=True, batch_size=1000, remove_columns=cols, num_proc=num_proc, desc="packing"
    )
    if len(out) == 0:
        raise LmlabError(
            f"the corpus has fewer than block_size={block_size} tokens; use more text or a smaller block"
        )
    return out


def train_valid_split(
    dataset: Dataset, valid_fraction: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """A deterministic (same seed, same split) shuffled split into train and validation, at least one row each."""
    if not 0.0 < valid_fraction < 1.0:
        raise LmlabError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if len(dataset) < 2:
        raise LmlabError(f"cannot split a data set of {len(dataset)} row(s) into train and validation")
    n_valid = min(max(1, round(len(dataset) * valid_fraction)), len(dataset) - 1)
    parts = dataset.train_test_split(test_size=n_valid, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
