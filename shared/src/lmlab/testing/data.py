"""Tiny data sets written to a folder, in the formats `lmlab.data` reads."""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.testing.tokenizers import default_texts


def tiny_texts(n: int = 64, min_words: int = 8) -> list[str]:
    """`n` real English paragraphs (from the shipped WikiText sample), each at least `min_words` words, cycled
    if more are asked for than the sample holds."""
    pool = [t for t in default_texts() if len(t.split()) >= min_words]
    return [pool[i % len(pool)] for i in range(n)]


def write_text_corpus(folder: str | Path, name: str = "corpus.txt", n: int = 64) -> Path:
    """A `.txt` corpus with one document per line."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tiny_texts(n)) + "\n", encoding="utf-8")
    return path


def write_jsonl_corpus(
    folder: str | Path, name: str = "corpus.jsonl", n: int = 64, column: str = "text"
) -> Path:
    """A `.jsonl` corpus with one `{column: text}` object per line."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({column: t}) + "\n" for t in tiny_texts(n)), encoding="utf-8")
    return path


def write_environments(folder: str | Path, names: tuple[str, ...] = ("env_a", "env_b"), n: int = 24) -> Path:
    """A folder with one `.txt` file per environment (different slices of the sample text each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = tiny_texts(n * len(names))
    for i, name in enumerate(names):
        (folder / f"{name}.txt").write_text("\n".join(texts[i * n : (i + 1) * n]) + "\n", encoding="utf-8")
    return folder
