"""Answer metrics of the reference (`util.py`) on lmlab's official SQuAD definitions. Two things differ from
SQuAD and are kept here: token F1 is 0 (not 1) when either side normalises to nothing, and exact match is by
default the reference's lenient *prefix* match (`prefix=False`: strict SQuAD EM)."""

from __future__ import annotations

from lmlab.metrics import normalize_answer, squad_exact_match, squad_f1

__all__ = ["exact_match", "f1_score", "normalize_answer"]


def f1_score(prediction: str, gold: str) -> float:
    """SQuAD token F1, except 0 when either answer is empty after normalisation (SQuAD scores two empty answers
    1; the reference scores them 0)."""
    if not normalize_answer(prediction) or not normalize_answer(gold):
        return 0.0
    return squad_f1(prediction, gold)


def exact_match(prediction: str, gold: str, prefix: bool = True) -> bool:
    """prefix=True (reference, lenient): the normalised prediction cut to the normalised gold's length equals
    the gold ("Parisian" matches "Paris"; an empty gold always matches). prefix=False: SQuAD's strict EM."""
    if not prefix:
        return bool(squad_exact_match(prediction, gold))
    ref = normalize_answer(gold)
    return normalize_answer(prediction)[: len(ref)] == ref
