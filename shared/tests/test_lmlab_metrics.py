"""lmlab.metrics against hand-computed values."""

import math

import pytest
from lmlab.metrics import (
    accuracy,
    f1,
    glue_metrics,
    matthews_corrcoef,
    max_over_ground_truths,
    normalize_answer,
    pearson,
    perplexity,
    rouge_l,
    spearman,
    squad_exact_match,
    squad_f1,
)


def test_squad_official_values():
    assert squad_f1("The Cat sat!", "a cat sat down") == pytest.approx(0.8)
    assert squad_exact_match("The  Cat.", "cat") == 1.0
    assert squad_exact_match("cats", "cat") == 0.0
    assert normalize_answer("  An apple, THE pear;  a-b ") == "apple pear ab"
    assert squad_f1("", "") == 1.0 and squad_f1("the", "cat") == 0.0  # "the" normalises to nothing
    assert squad_f1("dog", "cat") == 0.0
    # repeated tokens count once each: pred "a b b", gold "b b c" -> overlap 2, P=2/3, R=2/3
    assert squad_f1("x y y", "y y z") == pytest.approx(2 / 3)
    assert max_over_ground_truths(squad_f1, "cat sat", ["dog", "the cat sat", "cat"]) == 1.0
    assert max_over_ground_truths(squad_exact_match, "x", []) == 0.0


def test_classification_by_hand():
    preds, labels = [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]
    assert accuracy(preds, labels) == pytest.approx(0.6)
    # tp=2 fp=1 fn=1 -> F1 = 4/6
    assert f1(preds, labels) == pytest.approx(2 / 3)
    # MCC = (tp*tn - fp*fn)/sqrt(...) = (2*1-1*1)/sqrt(3*3*2*2) = 1/6
    assert matthews_corrcoef(preds, labels) == pytest.approx(1 / 6)
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0
    assert f1([0, 0], [0, 0]) == 0.0


def test_multiclass_by_hand_and_rouge_l():
    # 3 classes; confusion (rows true 0,1,2; cols pred): [[2,1,0],[0,1,1],[1,0,1]]
    labels = [0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 1, 1, 2, 0, 2]
    # per-class F1: c0 P=2/3 R=2/3 -> 2/3; c1 P=1/2 R=1/2 -> 1/2; c2 P=1/2 R=1/2 -> 1/2; macro = 5/9
    assert f1(preds, labels, average="macro") == pytest.approx(5 / 9)
    # Gorodkin: c=4, s=7, t=(3,2,2), p=(3,2,2): (4*7 - 17) / sqrt((49-17)*(49-17)) = 11/32
    assert matthews_corrcoef(preds, labels) == pytest.approx(11 / 32)
    # LCS("the cat sat on mat", "the cat was on the mat") = the cat on mat = 4; P = 4/5, R = 4/6
    assert rouge_l("The cat sat on mat", "the cat was on the mat") == pytest.approx(
        2 * 0.8 * (4 / 6) / (0.8 + 4 / 6)
    )
    assert rouge_l("mat-cat", "mat cat") == 1.0  # punctuation is a separator, not part of a token
    assert rouge_l("", "cat") == 0.0


def test_correlations_by_hand():
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(0.9933992677987828)
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 3, 3]) == 0.0 and pearson([1, 1], [1, 2]) == 0.0


def test_glue_uses_the_official_metric_per_task():
    assert set(glue_metrics("CoLA", [1, 0], [1, 0])) == {"matthews_correlation"}
    assert glue_metrics("mrpc", [1, 0, 1], [1, 1, 1]) == pytest.approx({"f1": 0.8, "accuracy": 2 / 3})
    assert set(glue_metrics("qqp", [1], [1])) == {"f1", "accuracy"}
    assert set(glue_metrics("sts-b", [0.1, 0.5, 0.9], [1, 2, 3])) == {"pearson", "spearmanr"}
    for task in ("sst2", "SST-2", "mnli", "mnli_mismatched", "qnli", "rte", "wnli"):
        assert set(glue_metrics(task, [0, 1], [0, 0])) == {"accuracy"}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_metrics("squad", [1], [1])


def test_shape_and_empty_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="no predictions"):
        accuracy([], [])
    with pytest.raises(ValueError, match="binary"):
        f1([1], [1], average="micro")


def test_perplexity():
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="at least one token"):
        perplexity(1.0, 0)
