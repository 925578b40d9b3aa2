"""CrossFit tsv parsing with the real ANLI / MNLI / ReCoRD samples, formatting, split halves, and metrics."""

import pytest
from lmlab.data import sample_path
from lmlab.errors import LmlabError
from lmlab.metrics import normalize_answer
from lmlab.testing import tiny_tokenizer
from mode_connectivity.data import (
    EncodedSplit,
    TextTaskOptions,
    apply_datasplit,
    collate,
    format_input,
    format_target,
    label_candidates,
    load_split,
    read_tsv,
    split_file,
)
from mode_connectivity.metrics import (
    ACC,
    CLS_F1,
    EM,
    MCC,
    PEARSON,
    QA_F1,
    evaluate_predictions,
    metric_for_task,
    raw_scores,
)


def _lines(path):
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.mark.parametrize("task", ["anli", "glue-mnli", "superglue-record"])
def test_real_crossfit_samples_parse(task):
    task_dir = sample_path(f"crossfit/{task}")
    for split in ("train", "dev", "test"):
        path = split_file(task_dir, split)
        examples = read_tsv(path)
        lines = _lines(path)
        assert len(examples) == len(lines)
        first = lines[0].split("\t")
        assert examples[0].input == first[0] and examples[0].answers == first[1:]
    train = load_split(task_dir, "train")
    if task in ("anli", "glue-mnli"):
        assert all(ex.input.startswith("premise: ") and " [SEP] hypothesis: " in ex.input for ex in train)
        assert set(label_candidates(train)) <= {"entailment", "neutral", "contradiction"}
        assert all(len(ex.answers) == 1 for ex in train)
    else:
        assert all(ex.input.startswith("question: ") and "@placeholder" in ex.input for ex in train)
        assert all(ex.answers[0].strip() for ex in train)  # entity answers (the sample has one per row)
    assert metric_for_task(task) == {"anli": CLS_F1, "glue-mnli": ACC, "superglue-record": QA_F1}[task]


def test_split_halves_disjoint_union_and_order():
    train = load_split(sample_path("crossfit/glue-mnli"), "train")
    n = len(train)
    s1 = load_split(sample_path("crossfit/glue-mnli"), "train", datasplit="split1")
    s2 = load_split(sample_path("crossfit/glue-mnli"), "train", datasplit="split2")
    assert len(s1) == n // 2 and len(s2) == n - n // 2
    assert s1 + s2 == train  # file order kept, disjoint, union = train
    odd = train[:7]
    assert len(apply_datasplit(odd, "split1")) == 3 and len(apply_datasplit(odd, "split2")) == 4
    with pytest.raises(LmlabError):
        apply_datasplit(odd, "split3")
    dev = load_split(sample_path("crossfit/glue-mnli"), "dev", datasplit="split1")
    assert len(dev) == len(_lines(split_file(sample_path("crossfit/glue-mnli"), "dev")))


def test_formatting_of_inputs_and_targets():
    assert format_input("premise: A [SEP] hypothesis: B", "anli") == " [anli] premise: A [SEP] hypothesis: B"
    assert format_input("X Y", "glue-mnli", lowercase=True) == " [glue-mnli] x y"
    assert format_input("X", "t", another_bos=True) == "<s>  [t] X"
    assert format_target("entailment") == "<extra_id_0>entailment"
    assert format_target("Neutral", lowercase=True, another_bos=True) == "<s> <extra_id_0>neutral"


def test_tokenised_targets_start_with_sentinel_and_end_with_eos():
    tok = tiny_tokenizer("t5")
    examples = load_split(sample_path("crossfit/superglue-record"), "dev")
    split = EncodedSplit(
        examples, tok, "superglue-record", TextTaskOptions(max_input_length=40, max_output_length=8)
    )
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    for ids, targets, ex in zip(split.input_ids, split.target_ids, examples, strict=True):
        assert len(ids) <= 40 and ids[-1] == tok.eos_token_id
        assert len(targets) == len(ex.answers)
        assert all(t[0] == sentinel and t[-1] == tok.eos_token_id and len(t) <= 8 for t in targets)
    text = tok.decode(split.input_ids[0], skip_special_tokens=True)
    assert text.lstrip().lstrip("[").startswith("superglue-record")  # the tiny vocabulary may lack brackets
    batch = collate([[5, 6, 7], [8]], [[1000, 9, 1], [1000, 1]], tok.pad_token_id)
    assert batch["labels"].tolist() == [[1000, 9, 1], [1000, 1, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_bad_rows_and_missing_splits_are_clear_errors(tmp_path):
    task = tmp_path / "glue-mnli"
    task.mkdir()
    (task / "glue-mnli_train.tsv").write_text("premise: a [SEP] hypothesis: b\tneutral\nno answer here\n")
    with pytest.raises(LmlabError, match=r"glue-mnli_train.tsv:2: expected"):
        load_split(task, "train")
    with pytest.raises(LmlabError, match="has no dev split"):
        load_split(task, "dev")
    with pytest.raises(LmlabError, match="does not exist"):
        load_split(tmp_path / "nope", "train")


def test_metric_lookup_and_override():
    assert metric_for_task("glue-cola") == MCC and metric_for_task("superglue-multirc") == EM
    assert metric_for_task("tiny-nli") == ACC and metric_for_task("whatever", override=EM) == EM
    with pytest.raises(LmlabError, match="known: "):
        metric_for_task("no-such-task")


def test_acc_case_insensitive_multi_gold():
    preds = ["Entailment ", "neutral", "x", "B"]
    golds = [["entailment"], ["contradiction"], ["y", "x"], ["a", "b"]]
    assert raw_scores(ACC, preds, golds) == [1.0, 0.0, 1.0, 1.0]
    assert evaluate_predictions(ACC, preds, golds) == pytest.approx(0.75)


def test_em_and_qa_f1_normalisation():
    assert normalize_answer("  The  Cat, sat!  ") == "cat sat"
    assert evaluate_predictions(EM, ["the Cat!", "dog"], [["cat"], ["a cat"]]) == pytest.approx(0.5)
    # "big red dog" vs gold "the red dog": common {red, dog}: p = 2/3, r = 1 -> f1 = 0.8; second gold better
    scores = raw_scores(QA_F1, ["big red dog", "Obama"], [["the red dog"], ["Barack Obama", "Obama"]])
    assert scores == pytest.approx([0.8, 1.0])
    assert evaluate_predictions(QA_F1, ["big red dog", "none"], [["the red dog"], ["x"]]) == pytest.approx(
        0.4
    )


def test_classification_f1_restricted_to_gold_labels():
    golds = [["a"], ["a"], ["b"], ["b"]]
    preds = ["a", "zzz", "b", "a"]
    # label a: tp 1, fp 1, fn 1 -> f1 0.5; label b: tp 1, fp 0, fn 1 -> f1 2/3; "zzz" is wrong, not a class
    assert evaluate_predictions(CLS_F1, preds, golds) == pytest.approx((0.5 + 2 / 3) / 2)
    assert raw_scores(CLS_F1, preds, golds) == [1.0, 0.0, 1.0, 0.0]


def test_matthews_mapping_and_pearson():
    golds = [["acceptable"], ["unacceptable"], ["acceptable"], ["unacceptable"]]
    assert (
        evaluate_predictions(MCC, ["acceptable", "unacceptable", "acceptable", "unacceptable"], golds) == 1.0
    )
    assert (
        evaluate_predictions(MCC, ["unacceptable", "acceptable", "unacceptable", "acceptable"], golds) == -1.0
    )
    assert (
        evaluate_predictions(MCC, ["acceptable", "garbage", "acceptable", "zzz"], golds) == 1.0
    )  # else -> 0
    assert evaluate_predictions(PEARSON, ["1", "2", "3"], [["2"], ["4"], ["6"]]) == pytest.approx(1.0)
    assert evaluate_predictions(PEARSON, ["x", "2", "3"], [["2"], ["4"], ["6"]]) == 0.0  # unparseable -> 0
    assert raw_scores(PEARSON, ["2", "3.0"], [["2"], ["3"]]) == [1.0, 0.0]


def test_rouge_l_is_rouge_score():
    from mode_connectivity.metrics import ROUGE_L

    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 tokens: p = r = 5/6; rouge-score's tokeniser
    # drops the full stop (a whitespace split would not match "mat." with "mat" and give 4/6)
    assert raw_scores(ROUGE_L, ["the cat sat on the mat."], [["the cat is on the mat"]]) == [
        pytest.approx(5 / 6)
    ]
    assert raw_scores(ROUGE_L, ["a b", ""], [["x", "a b"], ["y"]]) == [1.0, 0.0]
