"""Binarized corpora: a flat token array plus offsets in one uncompressed `.npz` (loaded with
`allow_pickle=False`), token counts as `.npy`, and a restricted reader for the reference's pickles.

The reference stored `pickle.dump(list_of_numpy_arrays)`; unpickling executes arbitrary code. `load_legacy_pickle`
only lets numpy's array reconstruction through and refuses every other global, with a one-line error.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lmlab.errors import LmlabError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


@dataclass
class Binarized:
    """Sequences as one flat id array and offsets (sequence i = ids[offsets[i]:offsets[i+1]])."""

    ids: np.ndarray
    offsets: np.ndarray
    vocab_size: int
    special: dict[str, int]
    tokenizer_name: str = ""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def sequences(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.int32)


def from_sequences(
    seqs: list, vocab_size: int, special: dict[str, int], tokenizer_name: str = ""
) -> Binarized:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if seqs else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise LmlabError(
            f"token ids outside the vocabulary 0..{vocab_size - 1}; check --vocab_size / the tokenizer"
        )
    return Binarized(flat.astype(id_dtype(vocab_size)), offsets, vocab_size, dict(special), tokenizer_name)


def save_binarized(data: Binarized, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        ids=data.ids,
        offsets=data.offsets,
        vocab_size=np.int64(data.vocab_size),
        special_names=np.array(list(data.special), dtype=str),
        special_ids=np.array(list(data.special.values()), dtype=np.int64),
        tokenizer_name=np.array(data.tokenizer_name, dtype=str),
    )
    tmp.replace(path)
    return path


def load_binarized(path: str | Path) -> Binarized:
    """Read a `.npz` written by `binarize` (or, with an explicit `.pickle`/`.pkl`, refuse and point at
    `--import_legacy_pickle`)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"binarized file {path} does not exist; run `diito binarize` first")
    if path.suffix in (".pickle", ".pkl"):
        raise LmlabError(
            f"{path} is a pickle; convert it with `diito binarize --import_legacy_pickle {path}`"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, offsets = z["ids"], z["offsets"]
            special = dict(zip(z["special_names"].tolist(), z["special_ids"].tolist(), strict=True))
            data = Binarized(ids, offsets, int(z["vocab_size"]), special, str(z["tokenizer_name"]))
    except (ValueError, KeyError, OSError) as err:
        raise LmlabError(f"{path} is not a diito binarized file ({err})") from err
    if len(data) == 0:
        raise LmlabError(f"binarized file {path} holds no sequence; binarize a non-empty corpus")
    return data


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise LmlabError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in a legacy data pickle"
            )
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_legacy_pickle(path: str | Path) -> list:
    """The reference's pickled data (a list of numpy arrays, or a list of ints for token counts), read with an
    unpickler that allows nothing but numpy arrays and plain Python containers."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"pickle {path} does not exist")
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except LmlabError:
        raise
    except Exception as err:
        raise LmlabError(f"cannot read legacy pickle {path}: {err}") from err
    if not isinstance(obj, list):
        raise LmlabError(f"legacy pickle {path} holds a {type(obj).__name__}, expected a list")
    return obj


def save_token_counts(counts: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, counts.astype(np.int64), allow_pickle=False)
    return path


def load_token_counts(path: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """Counts from `.npy` (ours), `.json` (a list of ints) or a legacy pickle (restricted)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"token counts file {path} does not exist; run `diito token-counts` first")
    if path.suffix == ".npy":
        try:
            counts = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:  # object (pickled) arrays are refused, never unpickled
            raise LmlabError(f"token counts {path} is not a plain .npy array of counts ({err})") from err
    elif path.suffix == ".json":
        counts = np.asarray(json.loads(path.read_text()), dtype=np.int64)
    elif path.suffix in (".pickle", ".pkl"):
        counts = np.asarray(load_legacy_pickle(path), dtype=np.int64)
    else:
        raise LmlabError(f"token counts {path}: expected a .npy, .json or legacy .pickle file")
    if counts.ndim != 1:
        raise LmlabError(f"token counts {path} must be one list of counts, got shape {counts.shape}")
    if vocab_size is not None and len(counts) != vocab_size:
        raise LmlabError(f"token counts {path} cover {len(counts)} ids but the vocabulary has {vocab_size}")
    return counts.astype(np.int64)


def token_counts(data: Binarized, vocab_size: int | None = None) -> np.ndarray:
    return np.bincount(data.ids.astype(np.int64), minlength=vocab_size or data.vocab_size).astype(np.int64)
