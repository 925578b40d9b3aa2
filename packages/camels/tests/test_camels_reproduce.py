"""Issue 11: the reproduction's data (facts among Brown text, entities disjoint across splits), the oracle arm,
documents in QA pre-training, `camels reproduce --quick` end to end (claims.json against the run folders), and
`camels demo`, which is that quick reproduction."""

import json

import pandas as pd
import pytest
import torch
from camels.cli import main
from camels.data import collate_lm, encode_doc, encode_qa
from camels.facts import SPLITS, entity_names, fact, make_facts
from camels.reproduce import ARMS, QUICK, answer_share
from camels.weighting import OracleWeights, UniformWeights
from lmlab.claims import holds
from lmlab.errors import LmlabError
from lmlab.testing import tiny_tokenizer

REQUIRED = {"camels_vs_uniform", "camels_vs_ssm", "camels_vs_tfidf", "oracle_vs_uniform"}
SIZES = {"qa_train": 40, "qa_val": 6, "train": 12, "val": 6, "test": 10}


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    out = make_facts(tmp_path_factory.mktemp("facts"), seed=3, sizes=SIZES, words=20)
    return {s: pd.read_csv(out / f"{s}.csv", keep_default_na=False) for s in SPLITS}


def test_entities_are_disjoint_across_splits_and_test_entities_never_appear_in_training_text(facts):
    names = {s: set(facts[s]["entity"]) for s in SPLITS}
    for s in SPLITS:
        assert len(names[s]) == SIZES[s] == len(facts[s])
        for t in SPLITS:
            if s != t:
                assert not names[s] & names[t], (s, t)
    seen = " ".join(" ".join(facts[s]["text"]) for s in ("qa_train", "qa_val", "train", "val"))
    for name in names["test"]:
        assert name not in seen
    fillers = {s: set(facts[s]["filler"]) for s in SPLITS}  # the Brown paragraphs are split too
    assert all(not fillers[s] & fillers[t] for s in SPLITS for t in SPLITS if s != t)


def test_every_document_states_its_answer_right_after_the_question_prompt(facts):
    for s in SPLITS:
        for text, question, answer, entity in facts[s][["text", "question", "answers", "entity"]].itertuples(
            index=False
        ):
            assert f"{question} {answer}." in text and entity in question
            assert text.count(question) == 1


def test_entity_names_are_distinct_and_facts_end_with_the_prompt():
    import random

    names = entity_names(300, random.Random(0))
    assert len(set(names)) == 300 and all(len(n.split()) == 2 for n in names)
    sentence, prompt = fact("hometown", "Kavor Delin", "Velmora")
    assert sentence == "The hometown of Kavor Delin is Velmora." and sentence.startswith(prompt + " ")


def test_oracle_weights_exactly_the_answer_tokens():
    tok = tiny_tokenizer("gpt2")
    doc = "some words before it. The hometown of Kavor Delin is Velmora. and some words after"
    oracle = OracleWeights(tok, {doc: ["Velmora"]})
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    answer = tok(" Velmora", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i : i + len(answer)] == answer)
    padded = torch.tensor([ids + [0, 0]])
    mask = torch.tensor([[1] * len(ids) + [0, 0]])
    w = oracle(padded, mask)[0]
    expected = torch.zeros(len(ids) + 2)
    expected[start : start + len(answer)] = 1.0
    assert torch.equal(w, expected) and w.sum() == len(answer) > 0
    with pytest.raises(LmlabError, match="does not occur"):
        OracleWeights(tok, {doc: ["Quenby"]})
    with pytest.raises(LmlabError, match="not in the stream"):
        oracle(torch.tensor([ids[:-1]]), torch.ones(1, len(ids) - 1, dtype=torch.long))


def test_answer_share_is_the_fraction_of_weight_on_answer_tokens():
    tok = tiny_tokenizer("gpt2")
    docs = [
        "one two The trade of Kavor Delin is baker. three",
        "The hometown of Sela Brun is Velmora. four five",
    ]
    oracle = OracleWeights(tok, {docs[0]: ["baker"], docs[1]: ["Velmora"]})
    n = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]
    k = [len(tok(" " + a, add_special_tokens=False)["input_ids"]) for a in ("baker", "Velmora")]
    assert answer_share(oracle, oracle, tok, docs, 1024) == 1.0
    assert answer_share(UniformWeights(), oracle, tok, docs, 1024) == pytest.approx(sum(k) / sum(n))
    assert answer_share(UniformWeights(0.0), oracle, tok, docs, 1024) == 0.0


def test_documents_in_qa_pretraining_are_labelled_on_every_token_and_pairs_on_the_answer_only():
    tok = tiny_tokenizer("gpt2")
    doc, q, a = "The trade of Kavor Delin is baker.", "The trade of Kavor Delin is", "baker"
    ids, labels = encode_doc(tok, doc, max_len=5)
    assert ids == tok(doc, add_special_tokens=False)["input_ids"][:5] + [tok.eos_token_id] and labels == ids
    batch = collate_lm(tok, [(None, doc), (q, a)], max_text_len=1024)
    d_ids, _ = encode_doc(tok, doc)
    qa_ids, qa_labels = encode_qa(tok, q, a)
    assert batch["qa_ids"][0, : len(d_ids)].tolist() == d_ids
    assert batch["qa_labels"][0, : len(d_ids)].tolist() == d_ids
    assert batch["qa_labels"][1, : len(qa_labels)].tolist() == qa_labels
    assert (batch["qa_labels"][1, len(qa_labels) :] == -100).all()
    assert batch["qa_mask"].sum(1).tolist() == [len(d_ids), len(qa_ids)]


def test_claims_rule_on_a_hand_example():
    # method mean 1.0, control mean 1.2; stds 0.1 and 0.2 -> margin 0.2 / sqrt(3) = 0.115 < 0.2: holds
    assert holds("lower", [0.9, 1.0, 1.1], [1.0, 1.2, 1.4])
    # control mean 1.1: the gain 0.1 is below the margin 0.115: does not hold
    assert not holds("lower", [0.9, 1.0, 1.1], [0.9, 1.1, 1.3])


@pytest.mark.slow
def test_reproduce_quick_writes_claims_equal_to_the_run_folders(tmp_path):
    out = tmp_path / "repro"
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    assert data["paper"] == "camels" and {c["id"] for c in data["claims"]} == REQUIRED
    keys = {"id", "statement", "metric", "better", "tolerance", "method", "control"}
    keys |= {"method_values", "control_values", "holds"}
    for c in data["claims"]:
        assert set(c) == keys and c["better"] == "lower"
        for arm, values in ((c["method"], c["method_values"]), (c["control"], c["control_values"])):
            files = [out / f"seed{s}" / arm / "test_ppl" / "results.json" for s in QUICK["seeds"]]
            assert values == [json.loads(f.read_text())["final_nll"] for f in files]
        assert c["holds"] == holds("lower", c["method_values"], c["control_values"])
    for s in QUICK["seeds"]:
        for arm in ARMS:
            em = json.loads((out / f"seed{s}" / arm / "test_em" / "results.json").read_text())
            assert {"avg_f1", "em_strict", "init_avg_f1"} <= set(em)
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[2] == "## Claims" and lines[4].startswith("| claim |")
    before = (out / "claims.json").read_text()
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0  # resumes: nothing re-run
    assert (out / "claims.json").read_text() == before


@pytest.mark.slow
def test_demo_is_the_quick_reproduction(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out)]) == 0
    assert json.loads((out / "reproduce.json").read_text())["sizes"] == QUICK
    claims = json.loads((out / "claims.json").read_text())
    assert claims["paper"] == "camels" and {c["id"] for c in claims["claims"]} == REQUIRED
    for c in claims["claims"]:
        files = [out / f"seed{s}" / c["method"] / "test_ppl" / "results.json" for s in QUICK["seeds"]]
        assert c["method_values"] == [json.loads(f.read_text())["final_nll"] for f in files]
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# CaMeLS") and lines[2] == "## Claims"
    assert (out / "token_weights.png").stat().st_size > 0
    before = (out / "claims.json").read_text()
    # the same run folders as `reproduce --quick`: it finds every one finished and rewrites the same claims
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    assert (out / "claims.json").read_text() == before
    # the old demo's --seed is gone: the quick reproduction's seeds are fixed
    assert main(["demo", "--seed", "1", "--output_dir", str(out)]) == 2
