"""Per-task metrics of the CrossFit text-to-text tasks (spec §2.3) and per-example raw scores.

Differs from the reference: every metric has a per-example raw score (the reference crashed for EM, Rouge-L,
Matthews and Pearson), and an unknown task name is an error listing the known names instead of a KeyError.
SQuAD F1/EM (official normalisation), ROUGE-L (`rouge-score`), Matthews (scikit-learn) and Pearson are lmlab's;
Classification-F1 is scikit-learn's macro F1 over the gold labels only (a prediction outside them counts as
wrong instead of adding a class of its own).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from lmlab.errors import LmlabError
from lmlab.metrics import (
    matthews_corrcoef,
    max_over_ground_truths,
    pearson,
    rouge_l,
    squad_exact_match,
    squad_f1,
)

ACC = "ACC"
EM = "EM"
QA_F1 = "QA-F1"
CLS_F1 = "Classification-F1"
MCC = "Matthews-Correlation"
PEARSON = "Pearson-Correlation"
ROUGE_L = "Rouge-L"
METRICS = (ACC, EM, QA_F1, CLS_F1, MCC, PEARSON, ROUGE_L)

#: task name (the task directory's basename) -> metric, the subset of the CrossFit table the paper touches
TASK_METRICS: dict[str, str] = {
    "glue-mnli": ACC,
    "glue-qnli": ACC,
    "glue-qqp": ACC,
    "glue-rte": ACC,
    "glue-sst2": ACC,
    "glue-mrpc": ACC,
    "glue-wnli": ACC,
    "glue-cola": MCC,
    "anli": CLS_F1,
    "superglue-record": QA_F1,
    "superglue-rte": ACC,
    "superglue-cb": ACC,
    "superglue-wic": ACC,
    "superglue-copa": ACC,
    "superglue-wsc": ACC,
    "boolq": ACC,
    "superglue-multirc": EM,
    "scitail": ACC,
    "sick": ACC,
    "glue-stsb": PEARSON,
    "squad-with-context": QA_F1,
    "samsum": ROUGE_L,
    "xsum": ROUGE_L,
}


def metric_for_task(task_name: str, override: str | None = None) -> str:
    """The metric of `task_name`; `override` (the `--metric` flag) wins. Synthetic `tiny-*` tasks use ACC."""
    if override:
        if override not in METRICS:
            raise LmlabError(f"unknown --metric {override!r}; choose from {', '.join(METRICS)}")
        return override
    if task_name in TASK_METRICS:
        return TASK_METRICS[task_name]
    if task_name.startswith("tiny-"):
        return ACC
    raise LmlabError(
        f"unknown task name {task_name!r} (no metric); known: {', '.join(sorted(TASK_METRICS))}; "
        "pass --metric to choose one"
    )


def _to_float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


def raw_scores(metric: str, predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> list[float]:
    """Per-example score in [0, 1] used by the knowledge analysis (§8): correctness for ACC, EM,
    Classification-F1 (prediction in the gold labels), Matthews and Pearson (exact string match); token F1
    for QA-F1; ROUGE-L for Rouge-L."""
    preds = [p.strip() for p in predictions]
    out = []
    for p, gs in zip(preds, golds, strict=True):
        if metric == ACC:
            out.append(float(any(p.lower() == g.strip().lower() for g in gs)))
        elif metric == EM:
            out.append(max_over_ground_truths(squad_exact_match, p, gs))
        elif metric == QA_F1:
            out.append(max_over_ground_truths(squad_f1, p, gs))
        elif metric == ROUGE_L:
            out.append(max_over_ground_truths(rouge_l, p, gs))
        elif metric == CLS_F1:
            out.append(float(p == gs[0].strip()))
        elif metric in (MCC, PEARSON):
            out.append(float(any(p == g.strip() for g in gs)))
        else:
            raise LmlabError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return out


def evaluate_predictions(metric: str, predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    """The task metric over a split (§2.3). `golds[i]` lists the acceptable answers of example i."""
    if len(predictions) != len(golds):
        raise LmlabError(f"{len(predictions)} predictions for {len(golds)} examples")
    if not golds:
        return 0.0
    preds = [p.strip() for p in predictions]
    if metric in (ACC, EM, QA_F1, ROUGE_L):
        return float(np.mean(raw_scores(metric, preds, golds)))
    first = [gs[0].strip() for gs in golds]
    if metric == CLS_F1:
        from sklearn.metrics import f1_score

        labels = sorted(set(first))
        # predictions outside the gold label set count as wrong: map them to a label that is never gold
        sentinel = "\x00__other__"
        mapped = [p if p in labels else sentinel for p in preds]
        return float(f1_score(first, mapped, labels=labels, average="macro", zero_division=0))
    if metric == MCC:
        y_true = [int(g == "acceptable") for g in first]
        y_pred = [int(p == "acceptable") for p in preds]
        return matthews_corrcoef(y_pred, y_true)
    if metric == PEARSON:
        x = np.array([_to_float(p) for p in preds])
        y = np.array([_to_float(g) for g in first])
        if np.isnan(x).any() or np.isnan(y).any():
            return 0.0
        r = pearson(x, y)
        return 0.0 if math.isnan(r) else r
    raise LmlabError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
