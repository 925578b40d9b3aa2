"""Answer metrics of the reference (`util.py`): SQuAD normalisation, token F1 (0 when either side is empty) and
exact match, by default the reference's lenient *prefix* match, `prefix=False` for strict SQuAD EM."""

from __future__ import annotations

import collections

from lmlab.metrics import normalize_answer as _squad_normalize


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse white space (SQuAD's normalisation)."""
    return _squad_normalize(s)


def f1_score(prediction: str, gold: str) -> float:
    """SQuAD token F1 of the normalised strings; 0 when there is no overlap (so also when either is empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str, prefix: bool = True) -> bool:
    """prefix=True (reference, lenient): the normalised prediction cut to the normalised gold's length equals
    the gold ("Parisian" matches "Paris"; an empty gold always matches). prefix=False: strict equality."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    return pred[: len(ref)] == ref if prefix else pred == ref
