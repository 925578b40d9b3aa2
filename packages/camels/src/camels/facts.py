"""Synthetic facts among real filler text, for a reproduction in which one gradient step on a document can
teach a tiny model a fact (issue 11).

Each document is a window of a Brown Corpus paragraph with one fact sentence inserted at a word boundary:
"The hometown of Kavor Delin is Velmora." Its question is the fact's cloze prompt ("The hometown of Kavor Delin
is", gold "Velmora"), in the StreamingQA layout (text, question, answers). Entities (made-up full names) are
drawn without replacement and split so that no entity of one split appears in another, and the Brown
paragraphs used as filler are split the same way; values (towns, trades) are shared, so a test fact is a new
(entity, value) pair the model has never seen.

Splits: `qa_train` / `qa_val` (pre-training of the base model on documents and QA pairs), `train` / `val`
(meta-training and meta-validation of the weighting model; `val` is also the stream the adaptation lr is chosen
on), `test` (the evaluation stream); `all.csv` (every document, for TF-IDF) and `owt_train` / `owt_val` (Brown
paragraphs as the locality texts, column raw_text).
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from lmlab.errors import LmlabError

BROWN = "brown/brown.jsonl.gz"
SPLITS = ("qa_train", "qa_val", "train", "val", "test")
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "tr"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l", "s", "th"]
TOWNS = [
    "Velmora",
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
    "Caldera",
    "Dunhollow",
    "Everton",
    "Fallowmere",
    "Glenhaven",
]
TRADES = [
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
RELATIONS = {"hometown": TOWNS, "trade": TRADES}


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def entity_names(n: int, rng: random.Random) -> list[str]:
    """`n` distinct made-up full names ("Kavor Delin"), in draw order."""
    names: dict[str, None] = {}
    while len(names) < n:
        first = (_syllable(rng) + _syllable(rng)).capitalize()
        last = (_syllable(rng) + _syllable(rng)).capitalize()
        names[f"{first} {last}"] = None
    return list(names)


def fact(relation: str, name: str, value: str) -> tuple[str, str]:
    """(sentence, cloze prompt): the prompt is the sentence up to the value, so the question asks exactly what
    the document states."""
    prompt = f"The {relation} of {name} is"
    return f"{prompt} {value}.", prompt


def brown_paragraphs(min_words: int = 40) -> list[tuple[int, str]]:
    """(line number, text) of the Brown Corpus paragraphs (lmlab's shipped sample) with at least `min_words`
    words, in corpus order."""
    from lmlab.data import sample_path

    with gzip.open(sample_path(BROWN), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return [(i, t) for i, t in enumerate(texts) if len(t.split()) >= min_words]


def fact_document(filler: str, sentence: str, rng: random.Random, words: int) -> str:
    """A window of `words` words of `filler` with `sentence` inserted after a random word of it (never first)."""
    tokens = filler.split()
    start = rng.randint(0, max(0, len(tokens) - words))
    window = tokens[start : start + words]
    cut = rng.randint(1, len(window))
    return " ".join([*window[:cut], sentence, *window[cut:]])


def fact_rows(
    names: Sequence[str], fillers: Sequence[tuple[int, str]], rng: random.Random, words: int
) -> list[dict]:
    """One document and its question per entity: a random relation and value, a random filler paragraph
    (column `filler`: its line in the Brown file)."""
    rows = []
    for name in names:
        relation = rng.choice(sorted(RELATIONS))
        value = rng.choice(RELATIONS[relation])
        sentence, prompt = fact(relation, name, value)
        line, filler = rng.choice(fillers)
        text = fact_document(filler, sentence, rng, words)
        rows.append({"text": text, "question": prompt, "answers": value, "entity": name, "filler": line})
    return rows


def make_facts(
    out_dir: str | os.PathLike,
    seed: int,
    sizes: dict[str, int],
    words: int = 40,
    n_loc: int = 64,
) -> Path:
    """Write the fact splits (`sizes`: documents per split of SPLITS) as CSVs in the StreamingQA layout plus
    `entity` and `filler` columns, all.csv and the locality texts. Entities and filler paragraphs are disjoint across splits."""
    missing = [s for s in SPLITS if s not in sizes]
    if missing:
        raise LmlabError(f"make_facts needs a size for every split, missing: {', '.join(missing)}")
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = entity_names(sum(sizes[s] for s in SPLITS), rng)
    paragraphs = brown_paragraphs()
    rng.shuffle(paragraphs)
    loc, paragraphs = paragraphs[: n_loc + n_loc // 4], paragraphs[n_loc + n_loc // 4 :]
    share = len(paragraphs) // len(SPLITS)
    everything = []
    for i, split in enumerate(SPLITS):
        taken, names = names[: sizes[split]], names[sizes[split] :]
        rows = fact_rows(taken, paragraphs[i * share : (i + 1) * share], rng, words)
        everything.extend(rows)
        pd.DataFrame(rows).to_csv(out / f"{split}.csv", index=False)
    pd.DataFrame({"text": [r["text"] for r in everything]}).to_csv(out / "all.csv", index=False)
    pd.DataFrame({"raw_text": [t for _, t in loc[:n_loc]]}).to_csv(out / "owt_train.csv", index=False)
    pd.DataFrame({"raw_text": [t for _, t in loc[n_loc:]]}).to_csv(out / "owt_val.csv", index=False)
    return out


__all__ = ["RELATIONS", "SPLITS", "brown_paragraphs", "entity_names", "fact", "fact_rows", "make_facts"]
