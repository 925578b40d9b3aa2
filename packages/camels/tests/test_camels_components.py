"""Spec §11 P11–P17: metrics, TF-IDF, salient spans, streams, online adaptation, generation, checkpoints."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from camels.data import build_stream, check_columns, collate_docs, encode_qa, make_synthetic, read_table
from camels.generation import generate
from camels.losses import weighted_lm_loss
from camels.metrics import exact_match, f1_score, normalize_answer
from camels.online import adapt
from camels.weighting import (
    CaMeLSWeightModel,
    SSMWeights,
    TfidfModel,
    UniformWeights,
    load_spacy,
    rule_based_nlp,
    ssm_token_weights,
)
from lmlab.data import sample_path
from lmlab.errors import LmlabError
from lmlab.testing import tiny_config, tiny_model, tiny_tokenizer

# ----------------------------------------------------------------------------------------------------- P11


@pytest.mark.parametrize(
    "pred,gold,f1,em,strict",
    [
        ("The Eiffel Tower!", "eiffel tower", 1.0, True, True),
        ("York New", "New York", 1.0, False, False),
        ("Paris, France", "Paris", 2 / 3, True, False),
        ("Parisian", "Paris", 0.0, True, False),
        ("anything", "", 0.0, True, False),
        ("", "Paris", 0.0, False, False),
        ("an apple a day", "apple day", 1.0, True, True),
        ("the", "a", 0.0, True, True),  # both empty once normalised: the reference's F1 is 0 (SQuAD's is 1)
    ],
)
def test_p11_metrics(pred, gold, f1, em, strict):
    assert f1_score(pred, gold) == pytest.approx(f1)
    assert exact_match(pred, gold) is em
    assert exact_match(pred, gold, prefix=False) is strict


def test_p11_normalize():
    assert normalize_answer("  The  Quick, brown-fox. ") == "quick brownfox"


# ----------------------------------------------------------------------------------------------------- P12


def test_p12_tfidf_matches_sklearn_formula():
    corpus = ["the cat sat on the mat", "the dog sat", "a cat and a dog"]
    model = TfidfModel(corpus)
    # by hand: n = 3; df(the)=2, df(cat)=2, df(sat)=2, df(on)=1, df(mat)=1; "a" is a 1-char word (dropped)
    idf = {
        w: math.log(4 / (1 + df)) + 1 for w, df in {"the": 2, "cat": 2, "sat": 2, "on": 1, "mat": 1}.items()
    }
    raw = {"the": 2 * idf["the"], "cat": idf["cat"], "sat": idf["sat"], "on": idf["on"], "mat": idf["mat"]}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    scores = model.doc_scores(corpus[0])
    for w, v in raw.items():
        assert scores[w] == pytest.approx(v / norm, rel=1e-12)
    # token weight = max over characters; spaces and 1-char words get 0
    tokens = ["the", " c", "at", " sat", " on", " the", " mat", " a"]
    weights = model.token_weights(tokens)
    assert weights[0] == pytest.approx(scores["the"]) and weights[1] == pytest.approx(scores["cat"])
    assert weights[2] == pytest.approx(scores["cat"]) and weights[-1] == 0.0
    # the threshold is the linear quantile of every non-zero corpus entry, strictly-greater kept
    values = np.concatenate([[v for v in model.doc_scores(d).values() if v > 0] for d in corpus])
    thr = float(np.quantile(values, 0.5))
    assert model.threshold(0.5) == pytest.approx(thr)
    assert model.threshold(0.0) == 0.0
    cut = model.token_weights(tokens, min_threshold=0.5)
    assert cut == [w if w > thr else 0.0 for w in weights]
    assert sum(c > 0 for c in cut) < sum(w > 0 for w in weights)


# ----------------------------------------------------------------------------------------------------- P13


def test_p13_salient_spans_rule_based():
    nlp = rule_based_nlp()
    tokens = [
        "On",
        " March",
        " 3",
        ",",
        " 1999",
        " the",
        " ",
        "Ada",
        " Love",
        "lace",
        " bought",
        " 12",
        " apples",
        ".",
    ]
    w = ssm_token_weights(tokens, nlp)
    by_token = dict(zip(tokens, w))
    assert (
        by_token[" March"] == 1 and by_token[" 1999"] == 1 and by_token[" 3"] == 1
    )  # DATE (month + day + year)
    assert by_token["Ada"] == 1 and by_token[" Love"] == 1 and by_token["lace"] == 1  # PERSON across tokens
    assert by_token[" 12"] == 0  # CARDINAL is ignored
    assert by_token[" bought"] == 0 and by_token[" "] == 0 and by_token["."] == 0
    assert by_token["On"] == 0


def test_p13_ssm_weighting_tensor_and_missing_model():
    tok = tiny_tokenizer("gpt2")
    ids = torch.tensor([tok(" In 1999 Marcus Brown left.", add_special_tokens=False)["input_ids"] + [0, 0]])
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    w = SSMWeights(rule_based_nlp(), tok)(ids, mask)
    assert w.shape == ids.shape and w[0, -2:].sum() == 0 and 0 < w.sum() < mask.sum()
    with pytest.raises(LmlabError, match="spacy download"):
        load_spacy("en_core_web_does_not_exist")


# ----------------------------------------------------------------------------------------------------- P14


def test_p14_streams(tmp_path):
    squad = read_table(sample_path("squad/sample.json"))
    a = build_stream("squad", squad, downsample_to=3, seed=1)
    b = build_stream("squad", squad, downsample_to=3, seed=1)
    assert a == b and len(a.docs) == len(set(a.docs)) == 3
    kept = set(a.docs)
    answerable = squad["answers"].map(lambda a: len(a["text"]) > 0)
    expected = int((squad["context"].isin(kept) & answerable).sum())
    assert len(a.qa) == expected and all(a.docs[i] in kept for _, _, i in a.qa)
    # the sample is in the flat `datasets` format; the nested SQuAD JSON of the same rows gives the same stream
    paragraphs = {}
    for _, r in squad.iterrows():
        qas = paragraphs.setdefault(r["context"], [])
        qas.append({"question": r["question"], "answers": [{"text": t} for t in r["answers"]["text"]]})
    nested = {"data": [{"title": c, "paragraphs": [{"context": c, "qas": q}]} for c, q in paragraphs.items()]}
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    assert build_stream("squad", read_table(tmp_path / "nested.json"), 3, 1) == a
    make_synthetic(tmp_path, seed=0, n_test=10)
    frame = pd.read_csv(tmp_path / "test.csv")
    s = build_stream("streamingqa", frame, downsample_to=-1, seed=3)
    assert len(s.docs) == len(frame) and len(set(s.docs)) < len(s.docs)  # not de-duplicated
    assert build_stream("streamingqa", frame, 5, 3) == build_stream("streamingqa", frame, 5, 3)
    arch = pd.DataFrame(
        {
            "doc_id": [1, 1, 2, 2],
            "para_num": [1, 0, 0, 1],
            "ans_paragraph": ["p1b", "p1a", "p2a", "p2b"],
            "question": ["q1", "q2", "q3", "q4"],
            "answer": ["x", "y", "z", "w"],
        }
    )
    s = build_stream("archivalqa", arch, -1, 0)
    assert sorted(s.docs) == ["p1a", "p1b", "p2a", "p2b"]
    i = s.docs.index("p1a")
    assert s.docs[i + 1] == "p1b"  # an article's paragraphs arrive in order
    assert {q for q, _, _ in s.qa} == {"q1", "q2", "q3", "q4"} and s.qa[0][1][0].isupper()
    with pytest.raises(LmlabError, match="answers"):
        check_columns("streamingqa", pd.DataFrame({"text": ["t"], "question": ["q"]}))
    with pytest.raises(LmlabError, match="empty"):
        build_stream("squad", squad, downsample_to=0, seed=0)


def test_nested_squad_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "title": "T",
                        "paragraphs": [
                            {
                                "context": "C",
                                "qas": [
                                    {
                                        "question": " q? ",
                                        "answers": [{"text": "long answer"}, {"text": "ans"}],
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        )
    )
    s = build_stream("squad", read_table(path), -1, 0)
    assert s.docs == ["C"] and s.qa == [("q?", "Ans", 0)]


def test_encode_qa_truncates_question_from_left():
    tok = tiny_tokenizer("gpt2")
    ids, labels = encode_qa(tok, "what is the name of the river " * 20, "Thames", max_len=16)
    assert len(ids) == 16 and ids[-1] == tok.eos_token_id
    answer = tok(" Thames", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labels[-len(answer) :] == answer and all(x == -100 for x in labels[: -len(answer)])


# ----------------------------------------------------------------------------------------------------- P15


def test_p15_online_adaptation():
    model, tok = tiny_model("gpt2", "clm", hidden=16, layers=1, heads=2)

    def make():
        return tiny_model(
            "gpt2", "clm", hidden=16, layers=1, heads=2, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0
        )[0]

    from camels.data import Stream

    stream = Stream(["The river Thames flows through London.", "Ada wrote notes in 1843."], [])

    class Cfg:
        lr, optimizer, grad_clip_thresh, max_text_len, loss_norm = 0.0, "adam", 750.0, 64, "padded"

    m0 = make()
    before = {k: v.clone() for k, v in m0.state_dict().items()}
    adapt(m0, UniformWeights(), stream, tok, Cfg, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m0.state_dict().items())

    Cfg.lr, Cfg.optimizer = 0.5, "sgd"
    m1, m2 = make(), make()
    adapt(m1, UniformWeights(), stream, tok, Cfg, progress=False)
    opt = torch.optim.SGD(m2.parameters(), lr=0.5)
    for doc in stream.docs:  # plain fine-tuning on mean NLL × n_real / (max_text_len − 1)
        b = collate_docs(tok, [doc], 64)
        out = m2(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["input_ids"])
        n_real = b["input_ids"].shape[1] - 1
        (out.loss * n_real / 63).backward()
        opt.step()
        opt.zero_grad()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6), n
    assert not torch.equal(before["transformer.wte.weight"], m1.state_dict()["transformer.wte.weight"])


def test_weighted_loss_rejects_nothing_on_empty_stream():
    from camels.data import Stream

    model, tok = tiny_model("gpt2", "clm", hidden=16, layers=1, heads=2)
    with pytest.raises(LmlabError, match="empty"):
        adapt(model, UniformWeights(), Stream([], []), tok, object(), progress=False)
    logits = torch.randn(1, 3, 5)
    assert (
        float(weighted_lm_loss(logits, torch.tensor([[1, 2, 3]]), torch.ones(1, 3), torch.zeros(1, 3))) == 0.0
    )


# ----------------------------------------------------------------------------------------------------- P16


def _prompts(tok):
    qs = ["Where was Ada born?", "Who wrote the notes in the year"]
    from camels.online import left_pad_questions

    return left_pad_questions(tok, qs)


def test_p16_greedy_and_beam_match_transformers():
    model, tok = tiny_model("gpt2", "clm", hidden=32, layers=2, heads=2, seed=3)
    model.eval()
    ids, mask = _prompts(tok)
    ours = generate(model, ids, mask, strategy="greedy", max_new_tokens=16, eos_token_id=tok.eos_token_id)
    for b in range(ids.shape[0]):
        real = ids[b : b + 1, mask[b] == 1]
        hf = model.generate(
            real,
            attention_mask=torch.ones_like(real),
            do_sample=False,
            max_new_tokens=16,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
        new = hf[0, real.shape[1] :].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert ours[b] == new and len(ours[b]) <= 16
        beam = generate(
            model,
            ids[b : b + 1],
            mask[b : b + 1],
            strategy="group_beam",
            num_beams=4,
            num_beam_groups=1,
            diversity_penalty=0.0,
            length_penalty=0.0,
            max_new_tokens=8,
            eos_token_id=tok.eos_token_id,
        )
        hf = model.generate(
            real,
            attention_mask=torch.ones_like(real),
            num_beams=4,
            length_penalty=0.0,
            early_stopping=True,
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
        new = hf[0, real.shape[1] :].tolist()
        new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert beam[0] == new


def test_p16_group_beam_batched_equals_single_and_eos_stops():
    model, tok = tiny_model("gpt2", "clm", hidden=32, layers=2, heads=2, seed=4)
    ids, mask = _prompts(tok)
    batched = generate(
        model, ids, mask, num_beams=12, num_beam_groups=4, diversity_penalty=10.0, max_new_tokens=16
    )
    singles = [
        generate(model, ids[b : b + 1, mask[b] == 1], mask[b : b + 1, mask[b] == 1], max_new_tokens=16)[0]
        for b in range(2)
    ]
    assert batched == singles and all(len(s) <= 16 for s in batched)
    assert batched == generate(model, ids, mask, max_new_tokens=16)  # deterministic
    # a model that always prefers EOS stops at once
    with torch.no_grad():
        model.lm_head.weight.zero_() if not model.config.tie_word_embeddings else None
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.wte.weight[tok.eos_token_id].fill_(0.0)
    bias = torch.zeros(model.config.vocab_size)
    bias[tok.eos_token_id] = 100.0
    model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    assert generate(model, ids, mask, strategy="greedy", eos_token_id=tok.eos_token_id) == [[], []]
    assert generate(model, ids, mask, num_beams=4, num_beam_groups=2, eos_token_id=tok.eos_token_id) == [
        [],
        [],
    ]


# ----------------------------------------------------------------------------------------------------- P17


def test_p17_checkpoint_round_trip_and_strict(tmp_path):
    cfg = tiny_config("gpt2", tiny_tokenizer("gpt2"), hidden=16, layers=1, heads=2)
    wm = CaMeLSWeightModel(cfg, hidden=8)
    torch.nn.init.normal_(wm.head[2].weight)
    path = wm.save(tmp_path / "w.pt")
    again = CaMeLSWeightModel.from_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(wm.state_dict().values(), again.state_dict().values()))
    other = CaMeLSWeightModel(cfg, hidden=4)
    with pytest.raises(LmlabError, match="does not match"):
        other.load(path)
    state = torch.load(path, weights_only=True)
    state["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(LmlabError, match="does not match"):
        CaMeLSWeightModel(cfg, hidden=8).load(tmp_path / "bad.pt")
