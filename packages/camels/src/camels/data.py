"""Data: the three datasets' tables (SQuAD nested or flat, StreamingQA and ArchivalQA CSVs), deterministic
document streams, QA encoding in the reference's prompt format, collation, and a synthetic generator.

Every loader returns a pandas DataFrame with the dataset's own columns; `qa_rows` turns it into uniform
(document, question, gold answer, group) rows. Tensors stay on the CPU here (moved in the loops).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from lmlab.data import read_table as strict_table
from lmlab.errors import LmlabError
from lmlab.logging import get_logger

DATASETS = ("streamingqa", "squad", "archivalqa", "synthetic")
REQUIRED = {
    "streamingqa": ("text", "question", "answers"),
    "synthetic": ("text", "question", "answers"),
    "squad": ("title", "context", "question", "answers"),
    "archivalqa": ("doc_id", "para_num", "ans_paragraph", "question", "answer"),
}


@dataclasses.dataclass
class Stream:
    """A document stream (in training order) and every question about it: (question, gold, doc_index)."""

    docs: list[str]
    qa: list[tuple[str, str, int]]


# ---------------------------------------------------------------------------------------------------- loading


def _squad_nested(obj: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for article in obj["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                rows.append(
                    {
                        "title": article.get("title", ""),
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": answers,
                    }
                )
    return pd.DataFrame(rows, columns=["title", "context", "question", "answers"])


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV, TSV, JSON/JSONL (SQuAD's nested {"data": [...]} format too) or parquet file as a DataFrame.

    CSV and TSV go through `lmlab.data.read_table`: a row with more or fewer fields than the header is an error
    naming the file and line (pandas would shift the columns), cells stay strings ("" never becomes NaN)."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return strict_table(path)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        if isinstance(obj, dict) and "data" in obj:
            nested = obj["data"] and isinstance(obj["data"][0], dict) and "paragraphs" in obj["data"][0]
            return _squad_nested(obj) if nested else pd.DataFrame(obj["data"])
        return pd.DataFrame(obj)
    raise LmlabError(
        f"{path}: unsupported data file type {suffix!r}; use .csv, .tsv, .json, .jsonl or .parquet"
    )


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_cells(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Every row must have a value (not empty, None or NaN) in each of `columns`: an error naming the file and
    the row (for a CSV/TSV file its line, found by re-reading it strictly), never a silent "nan" or drop."""
    for column in columns:
        blank = frame[column].map(_blank).to_numpy()
        if not blank.any():
            continue
        if Path(source).suffix.lower() in (".csv", ".tsv") and Path(source).is_file():
            strict_table(source, non_empty=(column,))  # raises, naming the line
        raise LmlabError(
            f"{source}, row {int(blank.nonzero()[0][0]) + 1}: column {column!r} is empty ({int(blank.sum())} "
            "such row(s)); fill or remove them"
        )


def _flatten_squad_answers(value: Any) -> list[str]:
    if isinstance(value, dict):  # HF `datasets` flat format: {"text": [...], "answer_start": [...]}
        value = value.get("text", [])
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
            return _flatten_squad_answers(parsed)
        except json.JSONDecodeError:
            return [value]
    return [str(v) for v in value]


def check_columns(
    name: str, frame: pd.DataFrame, source: str = "data", full_passage: bool = False
) -> pd.DataFrame:
    """Raise an LmlabError naming the missing columns of `frame` for dataset `name` (`full_passage`: ArchivalQA's
    article column ans_text too)."""
    if name not in REQUIRED:
        raise LmlabError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    frame = frame.copy()
    if name == "squad" and "answers" not in frame.columns and "answers.text" in frame.columns:
        frame["answers"] = frame["answers.text"]
    if name == "squad" and "title" not in frame.columns and "context" in frame.columns:
        frame["title"] = frame[
            "context"
        ]  # no article titles (e.g. a flat sample): each paragraph is its own group
    required = list(dict.fromkeys((*REQUIRED[name], doc_column(name, full_passage))))
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise LmlabError(
            f"{source} lacks the column(s) {', '.join(missing)} needed for dataset={name}{' with full_passage' if full_passage else ''} (has: {', '.join(map(str, frame.columns))})"
        )
    check_cells(frame, [c for c in required if c != "title"], source)  # a SQuAD title may be empty
    if name == "squad":
        answerable = frame["answers"].map(lambda v: len(_flatten_squad_answers(v)) > 0)
        if not answerable.all():
            get_logger("camels.data").warning(
                "%s: dropped %d SQuAD v2 unanswerable question(s) (no gold answer)",
                source,
                int((~answerable).sum()),
            )
            frame = frame[answerable]
    if len(frame) == 0:
        raise LmlabError(f"{source} has no rows")
    return frame


def gold_answer(name: str, row: Any) -> str:
    """The gold string of a row: StreamingQA the shortest of the backslash-separated answers; SQuAD the
    shortest answer, stripped, first letter upper-cased; ArchivalQA the answer, first letter upper-cased."""
    if name in ("streamingqa", "synthetic"):
        alternatives = [a.strip() for a in str(row["answers"]).split("\\") if a.strip()]
        if not alternatives:
            raise LmlabError(f"answers {row['answers']!r} (question {row['question']!r}) has no answer text")
        return min(alternatives, key=len)
    if name == "squad":
        answers = _flatten_squad_answers(row["answers"])
        if not answers:
            return ""
        gold = min(answers, key=len).strip()
    else:
        gold = str(row["answer"]).strip()
    return gold[:1].upper() + gold[1:] if gold else gold


def doc_column(name: str, full_passage: bool = False) -> str:
    """The document column; `full_passage` (ArchivalQA only) picks the full article `ans_text`."""
    if full_passage and name == "archivalqa":
        return "ans_text"
    return {"squad": "context", "archivalqa": "ans_paragraph"}.get(name, "text")


def qa_rows(
    name: str, frame: pd.DataFrame, source: str = "data", full_passage: bool = False
) -> list[tuple[str, str, str]]:
    """(document, question, gold) per row, in table order, not de-duplicated (meta-training rows)."""
    frame = check_columns(name, frame, source, full_passage)
    col = doc_column(name, full_passage)
    return [(str(r[col]), str(r["question"]).strip(), gold_answer(name, r)) for _, r in frame.iterrows()]


def load_rows(name: str, path: str | os.PathLike, full_passage: bool = False) -> list[tuple[str, str, str]]:
    return qa_rows(name, read_table(path), str(path), full_passage)


def build_stream(
    name: str,
    frame: pd.DataFrame,
    downsample_to: int = -1,
    seed: int = 42,
    source: str = "data",
    full_passage: bool = False,
) -> Stream:
    """The deterministic evaluation stream of the spec §8.3 (numpy's legacy global RNG seeded with `seed`):

    StreamingQA: `frame.sample(downsample_to)` rows in order (whole-frame shuffle if −1), documents not
    de-duplicated. SQuAD: shuffle the order of titles, keep the first `downsample_to` distinct contexts and all
    their questions, stream = those contexts de-duplicated in order. ArchivalQA: stable sort by `para_num`,
    shuffle the order of `doc_id` groups, keep the first k distinct paragraphs; with `full_passage` the documents
    are their articles (`ans_text`), de-duplicated in order (the reference still counts k in paragraphs).
    """
    frame = check_columns(name, frame, source, full_passage)
    np.random.seed(seed)
    docs: list[str] = []
    qa: list[tuple[str, str, int]] = []
    if name in ("streamingqa", "synthetic"):
        n = len(frame) if downsample_to is None or downsample_to < 0 else min(downsample_to, len(frame))
        sample = (
            frame.sample(n) if (downsample_to is not None and downsample_to >= 0) else frame.sample(frac=1)
        )
        for _, row in sample.iterrows():
            docs.append(str(row["text"]))
            qa.append((str(row["question"]).strip(), gold_answer(name, row), len(docs) - 1))
    else:
        group_col, key_col = ("title", "context") if name == "squad" else ("doc_id", "ans_paragraph")
        text_col = doc_column(name, full_passage)
        if name == "archivalqa":  # numerically: a CSV's cells are strings, and "10" < "2"
            order = pd.to_numeric(frame["para_num"], errors="coerce")
            if order.isna().any():
                row = int(order.isna().to_numpy().nonzero()[0][0])
                raise LmlabError(
                    f"{source}, row {row + 1}: para_num {frame['para_num'].iloc[row]!r} is not a number"
                )
            frame = frame.iloc[order.argsort(kind="stable")]
        groups = frame[group_col].unique()
        np.random.shuffle(groups)
        by_group = {g: sub for g, sub in frame.groupby(group_col, sort=False)}
        kept: set[str] = set()  # distinct paragraphs (contexts) kept, what downsample_to counts
        index: dict[str, int] = {}  # distinct documents in stream order
        limit = None if downsample_to is None or downsample_to < 0 else downsample_to
        for g in groups:
            for _, row in by_group[g].iterrows():
                key = str(row[key_col])
                if key not in kept:
                    if limit is not None and len(kept) >= limit:
                        continue
                    kept.add(key)
                text = str(row[text_col])
                if text not in index:
                    index[text] = len(docs)
                    docs.append(text)
                qa.append((str(row["question"]).strip(), gold_answer(name, row), index[text]))
            if limit is not None and len(kept) >= limit:
                break
    if not docs:
        raise LmlabError(f"the {name} stream is empty (downsample_to={downsample_to}); use more documents")
    return Stream(docs, qa)


# ------------------------------------------------------------------------------------------------ encoding


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_qa(
    tokenizer: Any, question: str, answer: str, max_len: int = 128, eos: bool = True
) -> tuple[list[int], list[int]]:
    """The reference prompt: tokens(question.strip()) ++ tokens(" " + answer) [++ EOS], tokenised separately.
    Labels are −100 on the question. Too long: the question is cut from the left so the answer (and EOS) stay."""
    q = tokenizer(question.strip(), add_special_tokens=False)["input_ids"]
    a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if eos:
        a = a + [tokenizer.eos_token_id]
    a = a[:max_len]
    q = q[max(0, len(q) - (max_len - len(a))) :] if len(q) + len(a) > max_len else q
    return q + a, [-100] * len(q) + a


def encode_doc(tokenizer: Any, text: str, max_len: int = 1024) -> tuple[list[int], list[int]]:
    """A document as a plain LM example: its tokens (at most `max_len`, as `collate_docs` cuts them) then EOS,
    every position a label."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_len] + [tokenizer.eos_token_id]
    return ids, list(ids)


def collate_lm(
    tokenizer: Any,
    items: Sequence[tuple[str | None, str]],
    max_question_len: int = 128,
    eos: bool = True,
    max_text_len: int = 1024,
) -> dict[str, torch.Tensor]:
    """A right-padded batch of QA pairs (question, answer) and documents (None, text), in `collate_qa`'s keys:
    QA pairs are labelled on the answer only, documents on every token."""
    enc = [
        encode_doc(tokenizer, a, max_text_len)
        if q is None
        else encode_qa(tokenizer, q, a, max_question_len, eos)
        for q, a in items
    ]
    return _pad_labelled(tokenizer, enc)


def _pad_labelled(tokenizer: Any, enc: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    L = max(len(i) for i, _ in enc)
    ids = torch.full((len(enc), L), pad_id(tokenizer), dtype=torch.long)
    labels = torch.full((len(enc), L), -100, dtype=torch.long)
    mask = torch.zeros((len(enc), L), dtype=torch.long)
    for b, (i, lab) in enumerate(enc):
        ids[b, : len(i)] = torch.tensor(i)
        labels[b, : len(lab)] = torch.tensor(lab)
        mask[b, : len(i)] = 1
    return {"qa_ids": ids, "qa_mask": mask, "qa_labels": labels}


def collate_qa(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_len: int = 128, eos: bool = True
) -> dict[str, torch.Tensor]:
    """Right-padded QA batch: qa_ids, qa_mask, qa_labels (−100 on question and padding)."""
    return _pad_labelled(tokenizer, [encode_qa(tokenizer, q, a, max_len, eos) for q, a in pairs])


def qa_loc_batch(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], max_len: int = 128
) -> dict[str, torch.Tensor]:
    """QA pairs as a locality set (`qa_loc`): `loc_mask` marks the positions that predict answer tokens (the
    reference's roll(labels != −100, −1)), so the KL counts only there."""
    b = collate_qa(tokenizer, pairs, max_len)
    loc_mask = torch.zeros_like(b["qa_mask"])
    loc_mask[:, :-1] = (b["qa_labels"][:, 1:] != -100).long()
    return {"input_ids": b["qa_ids"], "attention_mask": b["qa_mask"], "loc_mask": loc_mask}


def collate_docs(tokenizer: Any, docs: Sequence[str], max_len: int = 1024) -> dict[str, torch.Tensor]:
    """Right-padded documents, truncated to `max_len` tokens, padded only to the longest in the batch."""
    enc = [
        tokenizer(d, add_special_tokens=False)["input_ids"][:max_len] or [tokenizer.eos_token_id]
        for d in docs
    ]
    L = max(len(e) for e in enc)
    ids = torch.full((len(enc), L), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(enc), L), dtype=torch.long)
    for b, e in enumerate(enc):
        ids[b, : len(e)] = torch.tensor(e)
        mask[b, : len(e)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def meta_batch(
    tokenizer: Any,
    rows: Sequence[tuple[str, str, str]],
    max_text_len: int = 1024,
    max_question_len: int = 128,
) -> dict[str, torch.Tensor]:
    """A meta-training batch from (document, question, answer) rows."""
    docs = collate_docs(tokenizer, [r[0] for r in rows], max_text_len)
    out = {"doc_ids": docs["input_ids"], "doc_mask": docs["attention_mask"]}
    out.update(collate_qa(tokenizer, [(r[1], r[2]) for r in rows], max_question_len))
    return out


# --------------------------------------------------------------------------------------------- synthetic data

_FIRST = [
    "Alvar",
    "Brisa",
    "Corin",
    "Dalia",
    "Emeric",
    "Fenna",
    "Gideon",
    "Hesper",
    "Ilona",
    "Joren",
    "Kasimir",
    "Liora",
    "Magnus",
    "Nerys",
    "Oswin",
    "Petra",
    "Quillon",
    "Rosalind",
    "Sorin",
    "Tamsin",
    "Ulric",
    "Vesna",
    "Wendel",
    "Xenia",
    "Yorick",
    "Zelda",
]
_LAST = [
    "Ashdown",
    "Bellweather",
    "Crane",
    "Dunmore",
    "Everly",
    "Fairbank",
    "Galloway",
    "Holloway",
    "Ironside",
    "Jessop",
    "Kettering",
    "Lockhart",
    "Merriweather",
    "Northcott",
    "Oakley",
    "Pemberton",
    "Quarry",
    "Rutherford",
    "Stanhope",
    "Thistlewood",
]
_CITIES = [
    "Velmora",
    "Kestrel Bay",
    "Ostrava",
    "Luneford",
    "Marrowgate",
    "Pellucid",
    "Quenby",
    "Ravensholm",
    "Silverfen",
    "Thornwick",
    "Umberlee",
    "Westmarch",
    "Yarrow",
    "Zennor",
    "Ashcombe",
    "Brightwater",
]
_JOBS = [
    "baker",
    "sculptor",
    "surveyor",
    "chemist",
    "pilot",
    "librarian",
    "astronomer",
    "carpenter",
    "diplomat",
    "cartographer",
    "violinist",
    "engineer",
]
_FILLER = [
    "The weather that season was mild and the streets were quiet.",
    "Local newspapers reported on the event in the following days.",
    "Many residents said they had expected the announcement for some time.",
    "Officials declined to comment further on the matter.",
    "The town council met twice that month to discuss the budget.",
    "Several visitors arrived from neighbouring regions for the occasion.",
]


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def synthetic_rows(n_docs: int, rng: random.Random) -> list[dict[str, str]]:
    """StreamingQA-format rows (text, question, answers): each document states facts about a made-up person
    among filler sentences; each fact gives one question."""
    rows = []
    for _ in range(n_docs):
        name, city, year, job = (
            _person(rng),
            rng.choice(_CITIES),
            str(rng.randint(1900, 2020)),
            rng.choice(_JOBS),
        )
        facts = [f"{name} was born in {city} in {year}.", f"{name} worked as a {job}."]
        filler = rng.sample(_FILLER, 2)
        text = " ".join([filler[0], *facts, filler[1]])
        qas = [
            (f"Where was {name} born?", city),
            (f"In what year was {name} born?", year),
            (f"What did {name} work as?", job),
        ]
        for q, a in rng.sample(qas, 2):
            rows.append({"text": text, "question": q, "answers": a})
    return rows


def make_synthetic(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_qa: int = 400,
    n_meta: int = 160,
    n_test: int = 40,
    n_loc: int = 40,
) -> Path:
    """Write a synthetic dataset in the StreamingQA layout: qa_train/qa_val (QA pre-training pairs about other
    people), train/val/test (meta splits and the test stream), all.csv (TF-IDF fit) and owt_train/owt_val
    (locality texts, column raw_text)."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        "qa_train": n_qa,
        "qa_val": max(8, n_qa // 10),
        "train": n_meta,
        "val": max(8, n_meta // 4),
        "test": n_test,
    }
    everything = []
    for split, n in splits.items():
        rows = synthetic_rows(n, rng)
        everything.extend(rows)
        pd.DataFrame(rows).to_csv(out / f"{split}.csv", index=False)
    pd.DataFrame({"text": sorted({r["text"] for r in everything})}).to_csv(out / "all.csv", index=False)
    for split, n in (("owt_train", n_loc), ("owt_val", max(4, n_loc // 4))):
        texts = [" ".join(rng.sample(_FILLER, 3)) for _ in range(n)]
        pd.DataFrame({"raw_text": texts}).to_csv(out / f"{split}.csv", index=False)
    return out


def read_loc_texts(path: str | os.PathLike) -> list[str]:
    frame = read_table(path)
    if "raw_text" not in frame.columns:
        raise LmlabError(
            f"{path} lacks the column raw_text needed for the locality texts (has: {', '.join(map(str, frame.columns))})"
        )
    if len(frame) == 0:
        raise LmlabError(f"{path} has no locality texts")
    check_cells(frame, ["raw_text"], str(path))
    return [str(t) for t in frame["raw_text"]]
