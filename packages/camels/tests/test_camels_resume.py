"""Exact resume with dropout on (issue 12): every training command (qa-pretrain, meta-train, eval's online
adaptation) is stopped after a checkpoint, run again with the same command, and compared with an uninterrupted
run: every weight, optimizer-state and carried tensor with torch.equal, and metrics.jsonl row for row."""

import json

import pytest
import torch
from camels import evaluate, meta_train, qa_pretrain
from camels.cli import main
from camels.data import make_synthetic
from lmlab.logging import read_jsonl
from lmlab.testing import save_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("camels_resume")
    data = make_synthetic(root / "data", seed=0, n_qa=24, n_meta=8, n_test=6, n_loc=4)
    base = save_tiny_model(root / "base", "gpt2", "clm", hidden=32, layers=1, heads=2, positions=128)
    assert json.loads((base / "config.json").read_text())["resid_pdrop"] > 0  # dropout on
    return root, data, base


class Killed(RuntimeError):
    pass


def _kill_at_step(monkeypatch, module, step):
    """Make `module`'s Trainer die when it is about to train optimizer step `step` + 1."""
    import pytorch_lightning as pl

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, i):
            if trainer.global_step == step:
                raise Killed(f"killed before step {step + 1}")

    build = module.build_trainer
    monkeypatch.setattr(
        module,
        "build_trainer",
        lambda *a, callbacks=(), **kw: build(*a, callbacks=[*callbacks, Kill()], **kw),
    )


def _compare_runs(resumed, straight, keys, same_state):
    a = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for key in keys:
        same_state(a[key], b[key], key)
    rows = read_jsonl(resumed / "metrics.jsonl")
    assert rows == read_jsonl(straight / "metrics.jsonl")
    train_steps = [r["step"] for r in rows if any(k.startswith("train/") for k in r)]
    assert train_steps == sorted(set(train_steps))  # each step once


def test_qa_pretrain_resumes_exactly_with_dropout(setup, monkeypatch, tmp_path, same_state):
    root, data, base = setup
    args = ["qa-pretrain", "--dataset", "synthetic", "--model", str(base)]
    args += ["--train_path", str(data / "qa_train.csv"), "--val_path", str(data / "qa_val.csv")]
    args += ["--max_steps", "5", "--lt_batch_size", "4", "--accumulate_grad_batches", "2", "--val_steps", "2"]
    args += ["--val_max_pairs", "4", "--lr", "3e-3", "--logger", "none", "--progress_bar", "false"]
    args += ["--checkpoint_every_n_steps", "2", "--log_every_n_steps", "1"]
    with monkeypatch.context() as m:
        _kill_at_step(m, qa_pretrain, 3)
        assert main([*args, "--output_dir", str(tmp_path / "resumed")]) == 1
    assert (
        torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    )
    assert main([*args, "--output_dir", str(tmp_path / "resumed")]) == 0
    assert main([*args, "--output_dir", str(tmp_path / "straight")]) == 0
    _compare_runs(
        tmp_path / "resumed", tmp_path / "straight", ["state_dict", "optimizer_states", "camels"], same_state
    )


@pytest.mark.parametrize("mode", ["unroll", "adjoint"])
def test_meta_train_resumes_exactly_with_dropout(setup, monkeypatch, tmp_path, mode, same_state):
    root, data, base = setup
    args = [
        "meta-train",
        "--dataset",
        "synthetic",
        "--base_model",
        str(base),
        "--pretrained_model",
        str(base),
    ]
    args += ["--train_path", str(data / "train.csv"), "--val_path", str(data / "val.csv")]
    args += ["--loc_train_path", str(data / "owt_train.csv"), "--loc_val_path", str(data / "owt_val.csv")]
    opts = {
        "update_batch_size": 2,
        "reset_base_freq": 4,
        "grad_acc_steps": 2,
        "max_text_len": 48,
        "inner_lr": 0.05,
        "outer_lr": 1e-3,
        "val_steps": 2,
        "val_max_batches": 1,
        "inner_dropout": "true",
        "meta_grad_mode": mode,
        "logger": "none",
        "checkpoint_every_n_steps": 2,
        "log_every_n_steps": 1,
        "max_steps": 4,
        "progress_bar": "false",
    }
    args += [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    with monkeypatch.context() as m:
        _kill_at_step(m, meta_train, 3)
        assert main([*args, "--output_dir", str(tmp_path / "resumed")]) == 1
    assert main([*args, "--output_dir", str(tmp_path / "resumed")]) == 0
    assert main([*args, "--output_dir", str(tmp_path / "straight")]) == 0
    _compare_runs(
        tmp_path / "resumed", tmp_path / "straight", ["state_dict", "optimizer_states", "camels"], same_state
    )


def test_eval_adaptation_resumes_exactly_with_dropout(setup, monkeypatch, tmp_path, capsys, same_state):
    """eval checkpoints every 2 documents (model, Adam state, stream position, snapshots); killed at document 4
    of a 6-document stream (2 epochs of 3), it resumes after document 2 and ends exactly like a straight run."""
    root, data, base = setup
    args = [
        "eval",
        "--dataset",
        "synthetic",
        "--base_model",
        str(base),
        "--test_path",
        str(data / "test.csv"),
    ]
    args += ["--weight_model", "uniform", "--downsample_to", "3", "--n_epochs", "2", "--grad_acc_steps", "2"]
    args += [
        "--lr",
        "1e-2",
        "--max_text_len",
        "48",
        "--generation_strategy",
        "greedy",
        "--max_new_tokens",
        "2",
    ]
    args += ["--generation_batch_size", "8", "--device", "cpu", "--progress_bar", "false"]
    args += ["--eval_every_k", "2", "--checkpoint_every_n_docs", "2"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    build = evaluate.build_weighting

    def dying(*a, **kw):
        weighting, calls = build(*a, **kw), []

        def weights(ids, mask):
            calls.append(1)
            if len(calls) == 4:
                raise Killed("killed at document 4")
            return weighting(ids, mask)

        return weights

    with monkeypatch.context() as m:
        m.setattr(evaluate, "build_weighting", dying)
        assert main([*args, "--output_dir", str(resumed)]) == 1
    state = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["camels_eval"]["docs_seen"] == 2 and state["camels_eval"]["snapshots"] == [2]
    assert not (resumed / "DONE").exists() and not (resumed / "results.json").exists()
    capsys.readouterr()
    assert main([*args, "--lr", "2e-2", "--output_dir", str(resumed)]) == 1  # other options: not resumed
    err = capsys.readouterr().err.strip().splitlines()
    assert "--lr 0.01, this one has 0.02" in err[-1] and "Traceback" not in "".join(err), err
    assert main([*args, "--output_dir", str(resumed)]) == 0
    assert main([*args, "--output_dir", str(straight)]) == 0
    a = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["camels_eval"]["docs_seen"] == 6
    same_state(a, b)  # parameters, Adam state, per-document losses, snapshot list
    for n in (2, 4, 6):
        assert (resumed / f"step{n}_em.csv").read_text() == (straight / f"step{n}_em.csv").read_text()
    assert (resumed / "final_em.csv").read_text() == (straight / "final_em.csv").read_text()
    rows = read_jsonl(resumed / "metrics.jsonl")
    assert rows == read_jsonl(straight / "metrics.jsonl") and [r["step"] for r in rows] == list(range(6))


def test_qa_pretrain_early_stop_happens_before_the_next_update(setup, tmp_path):
    """stop_k 1 and an lr too small to move any weight: the validation before update 2 finds no better NLL and
    stops the run there (validation now runs before the next update, which must then not happen)."""
    root, data, base = setup
    args = ["qa-pretrain", "--dataset", "synthetic", "--model", str(base), "--output_dir", str(tmp_path)]
    args += ["--train_path", str(data / "qa_train.csv"), "--val_path", str(data / "qa_val.csv")]
    args += ["--max_steps", "5", "--lt_batch_size", "4", "--accumulate_grad_batches", "1", "--val_steps", "1"]
    args += ["--val_max_pairs", "4", "--lr", "1e-30", "--early_stop", "true", "--stop_k", "1"]
    assert main([*args, "--logger", "none", "--progress_bar", "false"]) == 0
    history = json.loads((tmp_path / "val_history.json").read_text())
    assert [h["step"] for h in history] == [0, 1] and history[0]["nll"] == history[1]["nll"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
