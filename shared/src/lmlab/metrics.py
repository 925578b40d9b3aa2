"""Metrics with the official definitions, computed by the reference libraries where one exists (scikit-learn for\nclassification, SciPy for correlations, `rouge-score` for ROUGE-L); the official SQuAD normalisation and\nanswer matching; perplexity."""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli-mm", "qnli", "rte", "wnli", "ax")


def _arrays(predictions: Sequence, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, y


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Fraction of predictions equal to their label (scikit-learn)."""
    from sklearn.metrics import accuracy_score

    p, y = _arrays(predictions, labels)
    return float(accuracy_score(y, p))


def f1(predictions: Sequence, labels: Sequence, average: str = "binary", positive_label=1) -> float:
    """F1 (scikit-learn): `binary` (of `positive_label`, as GLUE's MRPC/QQP) or `macro` (unweighted mean over the
    labels present in either predictions or labels); 0.0 where it is undefined."""
    from sklearn.metrics import f1_score

    if average not in ("binary", "macro"):
        raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")
    p, y = _arrays(predictions, labels)
    return float(f1_score(y, p, average=average, pos_label=positive_label, zero_division=0))


def matthews_corrcoef(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation (scikit-learn; the multi-class form for more than two classes); 0.0 when undefined
    (a constant prediction or label)."""
    from sklearn.metrics import matthews_corrcoef as mcc

    p, y = _arrays(predictions, labels)
    return float(mcc(y, p))


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    p, y = _arrays(predictions, labels)
    if np.std(p) == 0 or np.std(y) == 0:
        return 0.0
    return float(stats.pearsonr(p.astype(float), y.astype(float))[0])


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks); 0.0 when either side is constant."""
    p, y = _arrays(predictions, labels)
    if np.std(p) == 0 or np.std(y) == 0:
        return 0.0
    return float(stats.spearmanr(p.astype(float), y.astype(float))[0])


def glue_metrics(task_name: str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The official metric(s) of a GLUE task: Matthews for CoLA; F1 and accuracy for MRPC and QQP; Pearson and
    Spearman for STS-B; accuracy elsewhere. `task_name` is case-insensitive; `sst-2`/`sts-b` spellings work."""
    task = task_name.lower().replace("-", "").replace("_", "")
    task = {"mnlimm": "mnli-mm", "mnlimismatched": "mnli-mm", "mnlimatched": "mnli"}.get(task, task)
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task_name!r}; choose from {', '.join(GLUE_TASKS)}")
    if task == "cola":
        return {"matthews_correlation": matthews_corrcoef(predictions, labels)}
    if task in ("mrpc", "qqp"):
        return {"f1": f1(predictions, labels), "accuracy": accuracy(predictions, labels)}
    if task == "stsb":
        return {"pearson": pearson(predictions, labels), "spearmanr": spearman(predictions, labels)}
    return {"accuracy": accuracy(predictions, labels)}


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower-case, drop punctuation, drop the articles a/an/the, collapse
    white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of the normalised strings (the official SQuAD v1.1 script; two empty answers score 1)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure with the `rouge-score` package's tokenisation (lower-cased, alphanumeric tokens)."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure)


def max_over_ground_truths(
    metric: Callable[[str, str], float], prediction: str, ground_truths: Sequence[str]
) -> float:
    """The best score of `prediction` against any of the reference answers (0.0 when there are none)."""
    return max((metric(prediction, gt) for gt in ground_truths), default=0.0)


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total negative log-likelihood / number of tokens); inf on overflow."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs at least one token, got n_tokens={n_tokens}")
    mean = total_nll / n_tokens
    return math.exp(mean) if mean < 700 else math.inf
