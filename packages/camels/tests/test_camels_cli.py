"""Spec §11 P18–P19 and the CLI: the marker-task sanity check, an end-to-end tiny run of
qa-pretrain → meta-train (with exact resume) → eval for all four weightings, and bad input."""

import json

import pandas as pd
import pytest
import torch
from camels.cli import main
from camels.data import make_synthetic
from camels.meta import MetaConfig, base_params, inner_update, meta_grad_wrt_weights
from lmlab.errors import LmlabError
from lmlab.testing import save_tiny_model, tiny_model

NO_DROP = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}


def test_p18_marker_task_meta_gradient_points_at_the_answer():
    """Documents of random tokens with a marker M followed by an answer v; the question is 'Q M' → v. With
    uniform weights the meta-gradient ∂L/∂w is most negative at v's position in most documents."""
    model, _ = tiny_model(
        "gpt2", "clm", seed=0, hidden=32, layers=2, heads=2, attn_implementation="eager", **NO_DROP
    )
    model = model.double()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    marker, prompt, hits, n = 5, 6, 0, 8
    for doc in range(n):
        ids = torch.randint(10, V, (1, 12), generator=g)
        pos = 3 + doc % 6
        answer = int(torch.randint(10, V, (1,), generator=g))
        ids[0, pos], ids[0, pos + 1] = marker, answer
        qa = torch.tensor([[prompt, marker, answer]])
        batch = {
            "doc_ids": ids,
            "doc_mask": torch.ones_like(ids),
            "qa_ids": qa,
            "qa_mask": torch.ones_like(qa),
            "qa_labels": torch.tensor([[-100, -100, answer]]),
        }
        cfg = MetaConfig(
            inner_lr=0.01, sequential_update=False, inner_dropout=False, max_text_len=12, c_kl=0.0
        )
        grad = meta_grad_wrt_weights(
            model, base_params(model), batch, torch.ones(1, 12, dtype=torch.float64), cfg
        )
        hits += int(grad[0].argmin()) == pos + 1
    assert hits >= n * 3 // 4, hits


def test_nan_inner_loss_is_a_clear_error():
    model, _ = tiny_model("gpt2", "clm", hidden=16, layers=1, heads=2, attn_implementation="eager")
    ids = torch.randint(5, 50, (1, 6))
    docs = {"doc_ids": ids, "doc_mask": torch.ones_like(ids)}
    w = torch.full((1, 6), float("nan"))
    with pytest.raises(LmlabError, match="not finite"):
        inner_update(model, base_params(model), docs, w, MetaConfig(max_text_len=8), create_graph=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("camels_e2e")
    data = make_synthetic(root / "data", seed=0, n_qa=40, n_meta=12, n_test=4, n_loc=6)
    base = save_tiny_model(
        root / "base", "gpt2", "clm", hidden=32, layers=2, heads=2, positions=256, **NO_DROP
    )
    return root, data, base


def _weighting_state(last_ckpt):
    """The weighting model's state dict inside meta-train's last.ckpt (the final weights)."""
    state = torch.load(last_ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("weight_model."): v for k, v in state.items() if k.startswith("weight_model.")}


def _run(args):
    return main([*args, "--progress_bar", "false"])


META = [
    "--dataset",
    "synthetic",
    "--update_batch_size",
    "2",
    "--reset_base_freq",
    "4",
    "--grad_acc_steps",
    "2",
    "--max_text_len",
    "128",
    "--inner_lr",
    "0.05",
    "--outer_lr",
    "1e-3",
    "--val_steps",
    "2",
    "--val_max_batches",
    "2",
    "--inner_dropout",
    "false",
    "--logger",
    "none",
    "--checkpoint_every_n_steps",
    "1",
]


@pytest.mark.slow
def test_p19_end_to_end_and_resume(setup, capsys):
    root, data, base = setup
    qa = root / "qa"
    assert (
        _run(
            [
                "qa-pretrain",
                "--dataset",
                "synthetic",
                "--model",
                str(base),
                "--train_path",
                str(data / "qa_train.csv"),
                "--val_path",
                str(data / "qa_val.csv"),
                "--output_dir",
                str(qa),
                "--max_steps",
                "6",
                "--lt_batch_size",
                "8",
                "--val_steps",
                "3",
                "--val_max_pairs",
                "8",
                "--lr",
                "1e-3",
                "--logger",
                "none",
            ]
        )
        == 0
    )
    history = json.loads((qa / "val_history.json").read_text())
    assert history[0]["step"] == 0 and {"nll", "exact_match", "avg_f1", "max_f1"} <= set(history[0])
    # model/ is the best model by validation NLL; results.json names where F1 and EM were best instead of copies
    result = json.loads((qa / "results.json").read_text())
    best = min(history, key=lambda h: h["nll"])
    assert (result["best_nll"], result["best_nll_step"]) == (best["nll"], best["step"])
    assert result["best_max_f1"] == max(h["max_f1"] for h in history)
    assert (
        [p.name for p in qa.glob("best_*")] == [] and (qa / "report.md").is_file() and (qa / "DONE").is_file()
    )
    assert (qa / "model" / "config.json").is_file() and (qa / "model" / "tokenizer.json").is_file()
    paths = [
        "--base_model",
        str(qa / "model"),
        "--pretrained_model",
        str(base),
        "--train_path",
        str(data / "train.csv"),
        "--val_path",
        str(data / "val.csv"),
        "--loc_train_path",
        str(data / "owt_train.csv"),
        "--loc_val_path",
        str(data / "owt_val.csv"),
    ]
    # an interrupted run (2 updates) resumed to 4 equals an uninterrupted 4-update run, bit for bit; without its
    # DONE the 2-update folder is what a run killed after its last checkpoint leaves (a finished one is refused)
    assert _run(["meta-train", *META, *paths, "--output_dir", str(root / "mt"), "--max_steps", "2"]) == 0
    (root / "mt" / "DONE").unlink()
    assert _run(["meta-train", *META, *paths, "--output_dir", str(root / "mt"), "--max_steps", "4"]) == 0
    assert (
        _run(
            [
                "meta-train",
                *META,
                *paths,
                "--output_dir",
                str(root / "mt_straight"),
                "--max_steps",
                "4",
                "--meta_grad_mode",
                "adjoint",
            ]
        )
        == 0
    )
    resumed = _weighting_state(root / "mt" / "checkpoints" / "last.ckpt")
    straight = _weighting_state(root / "mt_straight" / "checkpoints" / "last.ckpt")
    assert json.loads((root / "mt" / "results.json").read_text())["batches"] == 8
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], rtol=1e-4, atol=1e-7), k
    head = "head.2.weight"
    init = torch.zeros_like(straight[head])
    assert not torch.equal(straight[head], init)  # the weighting model learned something
    assert list((root / "mt" / "samples").glob("*.html"))
    weights = root / "mt" / "model"  # the best weighting model by validation loss
    common = [
        "eval",
        "--dataset",
        "synthetic",
        "--base_model",
        str(qa / "model"),
        "--test_path",
        str(data / "test.csv"),
        "--downsample_to",
        "3",
        "--max_text_len",
        "128",
        "--num_beams",
        "4",
        "--num_beam_groups",
        "2",
        "--generation_batch_size",
        "4",
    ]
    for method, extra in {
        "uniform": [],
        "ssm": ["--ssm_spacy_model", "rule_based"],
        "TFIDF": ["--min_threshold", "0.05"],
        "CaMeLS": ["--weight_model_path", str(weights)],
    }.items():
        out = root / "eval" / method
        assert _run([*common, "--weight_model", method, *extra, "--output_dir", str(out)]) == 0
        summary = json.loads((out / "final_em_summary.json").read_text())
        assert summary["n"] == 3 and 0 <= summary["em"] <= 1
        lines = (out / "final_em.csv").read_text().splitlines()
        assert lines[-3].startswith("EM,") and lines[-2].startswith("avg_f1,") and len(lines) == 3 + 3
    # an lr sweep: one sub-run per value and a sweep table
    assert (
        _run([*common, "--weight_model", "uniform", "--output_dir", str(root / "sweep"), "-m", "lr=0,1e-3"])
        == 0
    )
    sweep = json.loads((root / "sweep" / "sweep.json").read_text())
    assert [float(r["lr"]) for r in sweep] == [0.0, 1e-3] and all("avg_f1" in r for r in sweep)


def test_bad_inputs_are_one_line_errors(setup, tmp_path, capsys):
    root, data, base = setup
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["a doc"], "question": ["q?"]}).to_csv(bad, index=False)
    out = tmp_path / "out"
    common = [
        "eval",
        "--dataset",
        "streamingqa",
        "--base_model",
        str(base),
        "--weight_model",
        "uniform",
        "--output_dir",
        str(out),
    ]
    assert _run([*common, "--test_path", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answers" in err[0]
    assert _run([*common, "--test_path", str(data / "test.csv"), "--downsample_to", "0"]) == 1
    assert "empty" in capsys.readouterr().err
    wrong = tmp_path / "w.pt"
    torch.save({"state_dict": {"head.0.weight": torch.zeros(2, 2)}, "hparams": None}, wrong)
    assert (
        _run(
            [
                "eval",
                "--dataset",
                "synthetic",
                "--base_model",
                str(base),
                "--test_path",
                str(data / "test.csv"),
                "--weight_model",
                "CaMeLS",
                "--weight_model_path",
                str(wrong),
                "--output_dir",
                str(out),
            ]
        )
        == 1
    )
    assert "hparams" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
    assert (
        main(["eval", "--weight_model", "CaMeLS", "--output_dir", str(out)]) == 2
    )  # usage error: no weight_model_path
    assert main(["meta-train", "--update_batch_size", "4", "--reset_base_freq", "6"]) == 2
