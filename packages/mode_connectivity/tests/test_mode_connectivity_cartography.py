"""Cartography (training dynamics), its processing against an along-the-path analysis, candidate scoring,
and exact resume of an interrupted training job."""

import json
import shutil

import pytest
import torch
from mode_connectivity.cli import main
from mode_connectivity.data import EncodedSplit, TextTaskOptions, eval_batches, label_candidates, load_split
from mode_connectivity.evaluation import CandidateScorer
from mode_connectivity.make_tiny import build_t5, build_tokenizer, synthetic_tasks
from mode_connectivity.models import load_t5
from mode_connectivity.tools import example_statistics, forgotten_transitions
from safetensors.torch import load_file

SMALL = [
    "--max_input_length",
    "48",
    "--max_output_length",
    "8",
    "--predict_batch_size",
    "16",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc_carto")
    tok = build_tokenizer(root / "model")
    build_t5(root / "model", tok, d_model=32, num_layers=1, num_heads=2, d_ff=32, seed=0, dropout=0.0)
    tasks = synthetic_tasks(root / "data", n_train=24, n_eval=6, seed=1)
    return {"model": str(root / "model"), "task": str(tasks["tiny-nli"])}


def _train_args(tiny, out, *extra, method="adapter"):
    return [
        "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", method,
        "--adapter_size", "4", "--num_virtual_tokens", "3", "--learning_rate_list", "1e-2", "--bsz_list", "8",
        "--eval_mode", "rank", "--output_dir", str(out), "--progress_bar", "false", "--logger", "none", *SMALL, *extra,
    ]  # fmt: skip


def test_cartography_json_shape_and_ranges(tiny, tmp_path):
    out = tmp_path / "carto"
    assert main(_train_args(tiny, out, "--cartography", "--train_epochs", "2", "--do_predict", "false")) == 0
    data = json.loads((out / "cartography.json").read_text())
    assert sorted(data, key=int) == [str(i) for i in range(24)]  # every train example, file order
    for rec in data.values():
        assert len(rec["acc"]) == 2 and len(rec["confidence"]) == 2
        assert all(a in (0.0, 1.0) for a in rec["acc"]) and all(0.0 <= c <= 1.0 for c in rec["confidence"])
    assert not list(out.glob("checkpoint@*"))  # no interval checkpoints in cartography mode
    assert (out / "model" / "weights.safetensors").is_file() and (out / "DONE").is_file()


def test_candidate_probabilities_sum_to_one(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["model"])
    model = load_t5(tiny["model"]).eval()
    train = load_split(tiny["task"], "train")
    scorer = CandidateScorer(tok, label_candidates(train))
    assert sorted(scorer.candidates) == ["contradiction", "entailment", "neutral"]
    split = EncodedSplit(train[:8], tok, "tiny-nli", TextTaskOptions(48, 8))
    idx, batch = eval_batches(split, 8)[0]
    lp = scorer.log_probs(model, batch)
    probs = torch.softmax(lp, -1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8))
    # the score is the label's log-prob under teacher forcing after the shared prefix (sentinel, EOS excluded)
    c = 1
    labels = torch.tensor(scorer.ids[c]).unsqueeze(0).repeat(8, 1)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        ).logits
    tok_lp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    expected = tok_lp[:, scorer.score_from : len(scorer.ids[c]) - 1].sum(-1)
    torch.testing.assert_close(lp[:, c], expected)


def test_cartography_process_hand_computed(tmp_path):
    carto = {
        "0": {"acc": [1, 1, 1], "confidence": [0.9, 0.8, 0.7]},
        "1": {"acc": [0, 1, 0], "confidence": [0.2, 0.6, 0.4]},
        "2": {"acc": [0, 0, 1], "confidence": [0.1, 0.1, 0.7]},
    }
    analysis = {
        "0.0": {"zero_list": [], "one_list": [0, 1, 2]},
        "0.2": {"zero_list": [1], "one_list": [0, 2]},
        "0.4": {"zero_list": [1, 2], "one_list": [0]},
        "1.0": {"zero_list": [0], "one_list": [1, 2]},
    }
    stats = example_statistics(carto)
    assert stats["1"]["confidence"] == pytest.approx(0.4)
    assert stats["1"]["variability"] == pytest.approx(((0.04 + 0.04 + 0.0) / 3) ** 0.5)  # population std
    assert stats["1"]["turns"] == 2 and stats["2"]["turns"] == 1 and stats["0"]["turns"] == 0
    rows = forgotten_transitions(carto, analysis)
    assert [r["transition"] for r in rows] == [
        "start ===> 0.0",
        "0.0 ===> 0.2",
        "0.2 ===> 0.4",
        "0.4 ===> 1.0",
    ]
    assert [r["count"] for r in rows] == [0, 1, 1, 1]
    assert rows[0]["confidence"] == 0.0  # empty set -> 0
    assert rows[1]["correctness"] == pytest.approx(1 / 3) and rows[1]["confidence"] == pytest.approx(0.4)
    assert rows[2]["confidence"] == pytest.approx(0.3) and rows[2]["turns"] == 1
    assert rows[3]["confidence"] == pytest.approx(0.8) and rows[3]["variability"] == pytest.approx(
        (0.02 / 3) ** 0.5
    )
    cp, ap = tmp_path / "c.json", tmp_path / "a.json"
    cp.write_text(json.dumps(carto))
    ap.write_text(json.dumps(analysis))
    assert (
        main(
            [
                "cartography-process",
                "--cartography_path",
                str(cp),
                "--analysis_path",
                str(ap),
                "--save_path",
                str(tmp_path / "out.txt"),
            ]
        )
        == 0
    )
    text = (tmp_path / "out.txt").read_text().splitlines()
    assert (
        text[1].startswith("0.0 ===> 0.2\tcount 1")
        and json.loads((tmp_path / "out.json").read_text())[3]["count"] == 1
    )


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_interrupted_training_resumes_exactly(tiny, tmp_path, method):
    common = [
        "--train_iters",
        "4",
        "--valid_interval",
        "2",
        "--output_interval",
        "2",
        "--checkpoint_every_n_steps",
        "2",
    ]
    assert main(_train_args(tiny, tmp_path / "full", *common, method=method)) == 0
    # an interrupted run: stop after 2 updates, drop what the end of the run writes, start the same command again
    part = tmp_path / "part"
    assert main(_train_args(tiny, part, *common[:1], "2", *common[2:], method=method)) == 0
    job = part
    shutil.rmtree(job / "model")
    (job / "DONE").unlink()
    assert (job / "checkpoints" / "last.ckpt").is_file()
    step2 = (job / "checkpoint@2" / "weights.safetensors").stat().st_mtime_ns
    assert main(_train_args(tiny, part, *common, method=method)) == 0
    # it continued from last.ckpt: updates 1-2 were not run again (their checkpoint was not rewritten)
    assert (job / "checkpoint@2" / "weights.safetensors").stat().st_mtime_ns == step2
    a = load_file(str(tmp_path / "full" / "checkpoint@4" / "weights.safetensors"))
    b = load_file(str(job / "checkpoint@4" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((job / "model" / "meta.json").read_text())
    assert meta["step"] == 4
    # a finished run is not run again by accident: refused in one line (--overwrite trains it again)
    before = (job / "model" / "weights.safetensors").stat().st_mtime_ns
    assert main(_train_args(tiny, part, *common, method=method)) == 1
    assert (job / "model" / "weights.safetensors").stat().st_mtime_ns == before
    assert (job / "DONE").is_file()
