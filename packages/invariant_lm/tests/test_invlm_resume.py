"""Issue 12: a killed `invariant-lm train` resumes bit-exactly with dropout on (every weight, all n + 1 optimizer
and scheduler states, metrics.jsonl each step once), so does `InvariantTrainer` after save/load_checkpoint; a
non-finite loss stops the run naming step and environment; bad input and crafted pickles fail in one line with
no run folder written and nothing unpickled."""

import json
from pathlib import Path

import pytest
import torch
from invariant_lm.cli import main
from invariant_lm.model import InvariantMLM
from lmlab.logging import read_jsonl
from lmlab.testing import save_tiny_model, write_environments, write_text_corpus


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("invlm_resume")
    model = save_tiny_model(
        root / "model", "roberta", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    assert json.loads((model / "config.json").read_text())["hidden_dropout_prob"] == 0.1  # dropout on
    write_environments(root / "envs", ("b_env", "a_env"), n=24)
    write_text_corpus(root, "valid.txt", n=12)
    return root


def _train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(root / "model"), "--train_file", str(root / "envs"),
            "--validation_file", str(root / "valid.txt"), "--do_train", "--do_eval", "--nb_steps", "4",
            "--learning_rate", "1e-3", "--output_dir", str(out), "--seed", "123", "--max_seq_length", "32",
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "2",
            "--progress_bar", "false", "--logger", "none", "--no_cuda", *extra]  # fmt: skip


class Killed(RuntimeError):
    pass


def _kill_before_update(monkeypatch, update: int) -> None:
    """The next Trainer dies when it is about to run `update` (1-based), after the checkpoint of update 2."""
    import lmlab.training
    import pytorch_lightning as pl

    class Kill(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, i):
            if trainer.global_step == update - 1:
                raise Killed(f"killed before update {update}")

    build = lmlab.training.build_trainer
    monkeypatch.setattr(
        lmlab.training,
        "build_trainer",
        lambda *a, callbacks=(), **kw: build(*a, callbacks=[*callbacks, Kill()], **kw),
    )


def _without(rows: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in keys} for r in rows]


@pytest.mark.slow
def test_killed_train_resumes_exactly_with_dropout(workdir, tmp_path, monkeypatch, same_state):
    part, full = tmp_path / "part", tmp_path / "full"
    with monkeypatch.context() as m:
        _kill_before_update(m, 4)
        assert main(_train_args(workdir, part)) == 1
    ckpt = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and not (part / "DONE").exists()
    assert [r["update"] for r in read_jsonl(part / "train_log.jsonl")] == [1, 2, 3]  # update 3 is replayed
    assert main(_train_args(workdir, part)) == 0  # the same command resumes from last.ckpt
    assert main(_train_args(workdir, full)) == 0
    a = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    assert len(a["optimizer_states"]) == len(a["lr_schedulers"]) == 3  # body + 2 heads
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "loops"):
        same_state(a[key], b[key], key)
    inv_a, inv_b = ({k: v for k, v in c["invariant"].items() if k != "train_seconds"} for c in (a, b))
    same_state(inv_a, inv_b, "invariant")
    wa, wb = (InvariantMLM.from_pretrained(d).state_dict() for d in (part, full))
    same_state(wa, wb, "model/")
    rows = read_jsonl(part / "metrics.jsonl")
    assert _without(rows, "timestamp") == _without(read_jsonl(full / "metrics.jsonl"), "timestamp")
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)) and len(steps) == 4  # each step once
    log_a, log_b = read_jsonl(part / "train_log.jsonl"), read_jsonl(full / "train_log.jsonl")
    assert _without(log_a, "tokens_per_s") == _without(log_b, "tokens_per_s")
    assert (
        json.loads((part / "results.json").read_text())["eval"]
        == json.loads((full / "results.json").read_text())["eval"]
    )


def test_invariant_trainer_resumes_exactly_with_dropout(tmp_path, same_state):
    from invariant_lm._testing import args, deep, tiny, tokenised
    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import InvariantTrainer

    base, tok = tiny("bert", dropout=True)
    envs = {"x": tokenised(tok, 16, 16), "y": tokenised(tok, 16, 16, offset=16)}

    def trainer():
        model = InvariantMLM.from_base(deep(base), ["x", "y"]).train()
        return InvariantTrainer(model, args(max_steps=4), tokenizer=tok)

    straight = trainer()
    straight.train(envs)
    first = trainer()
    first.total_updates = 2
    first.train(envs)
    first.save_checkpoint(tmp_path / "ck")
    torch.manual_seed(999)  # whatever draws from the global generators in between must not matter
    resumed = trainer()
    resumed.load_checkpoint(tmp_path / "ck")
    resumed.train(envs)
    assert resumed.updates == straight.updates == 4
    same_state(resumed.state_dict(), straight.state_dict(), "trainer")


def _fails(capsys, argv, code, *needles):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # progress bars of transformers' loading may come before it
    assert last.startswith("invariant-lm ") and ": error: " in last and "Traceback" not in err, err
    for needle in needles:
        assert needle in last, (needle, last)
    return last


@pytest.mark.slow
def test_non_finite_loss_stops_naming_step_and_environment(workdir, tmp_path, capsys):
    out = tmp_path / "nan"
    argv = _train_args(workdir, out, "--learning_rate", "1e30", "--save_steps", "1", "--nb_steps", "6")
    err = _fails(capsys, argv, 1, "loss term 'mlm on environment", "last.ckpt")
    step = int(err.split("step ")[1].split(":")[0])
    assert step > 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step - 1  # the last good update is the resume point
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    for name in ("DONE", "model", "results.json", "report.md"):
        assert not (out / name).exists(), name


def test_bad_input_writes_no_run_folder(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_bytes(b"\xff\xfe learning_rate: 1\n")
    _fails(capsys, [*_train_args(workdir, out), "--config", str(bad_config)], 2, "UTF-8")
    _fails(capsys, _train_args(workdir, out, "--learning_rate", "-0.5"), 2, "--learning_rate must be > 0")
    _fails(capsys, _train_args(workdir, out, "--mlm_probability", "1.5"), 2, "--mlm_probability must be")
    _fails(capsys, _train_args(workdir, out, "--adam_beta2", "1"), 2, "--adam_beta2 must be")
    _fails(capsys, _train_args(workdir, out, "--validation_file", str(tmp_path / "nope.txt")), 1, "nope.txt")
    # one table with an environment column: a shifted row, an empty text cell, an empty environment cell
    table = tmp_path / "envs.csv"
    table_args = ["--train_file", str(table), "--env_column", "env"]
    table.write_text("text,env\nan extra,field,a\nthe cat sat on the mat,b\n")  # pandas: shifted columns
    _fails(capsys, _train_args(workdir, out, *table_args), 1, "line 2", "3 fields")
    table.write_text('text,env\nthe cat sat on the mat,a\n"",b\n')
    _fails(capsys, _train_args(workdir, out, *table_args), 1, "line 3", "'text' is empty")
    table.write_text("text,env\nthe cat sat on the mat,a\nthe dog sat on the log,\n")
    _fails(capsys, _train_args(workdir, out, *table_args), 1, "line 3", "'env' is empty")
    jsonl = tmp_path / "envs.jsonl"
    jsonl.write_text('{"text": "the cat sat", "env": "a"}\n{"text": null, "env": "b"}\n')
    _fails(capsys, _train_args(workdir, out, "--train_file", str(jsonl), "--env_column", "env"), 1, "row 2")
    # a checkpoint of a run with other environments, given to resume from
    other = tmp_path / "other.ckpt"
    torch.save(
        {"global_step": 2, "invariant": {"invariant_config": {"envs": ["x"]}, "total_updates": 4}}, other
    )
    _fails(capsys, _train_args(workdir, out, "--resume_from_checkpoint", str(other)), 1, "has 1 head(s)")
    assert not out.exists()


def test_table_environments_keep_every_row(tmp_path):
    from invariant_lm.data import load_environments

    table = tmp_path / "envs.csv"
    table.write_text('text,env\n"nan",b\n"one, with a comma",a\ntwo,b\n')
    envs = load_environments(table, env_column="env")
    assert list(envs) == ["a", "b"]
    assert envs["a"]["text"] == ["one, with a comma"] and envs["b"]["text"] == ["nan", "two"]


def test_crafted_pickles_are_refused_by_every_loading_path(workdir, tmp_path, capsys, malicious_pickle):
    from invariant_lm._testing import args, tiny
    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import InvariantTrainer
    from lmlab.errors import LmlabError

    base, tok = tiny("roberta")
    model = InvariantMLM.from_base(base, ["a_env", "b_env"])
    markers = []
    # the Python API
    (tmp_path / "state").mkdir()
    markers.append(malicious_pickle(tmp_path / "state" / "trainer_state.pt", wrap=lambda p: {"model": p}))
    with pytest.raises(LmlabError, match="weights_only=True"):
        InvariantTrainer(model, args(), tokenizer=tok).load_checkpoint(tmp_path / "state")
    # eval of a .ckpt, and eval --checkpoint
    evil = tmp_path / "evil.ckpt"
    markers.append(malicious_pickle(evil, wrap=lambda p: {"state_dict": {}, "invariant": p}))
    valid = ["--validation_file", str(workdir / "valid.txt"), "--max_seq_length", "32"]
    _fails(capsys, ["eval", "--model_name_or_path", str(evil), *valid], 1, str(evil), "weights_only=True")
    run = tmp_path / "run"
    model.save_pretrained(run, tokenizer=tok)
    argv = ["eval", "--model_name_or_path", str(run), "--checkpoint", str(evil), *valid]
    _fails(capsys, argv, 1, str(evil), "weights_only=True")
    # train: --resume_from_checkpoint PATH, and a crafted last.ckpt resumed automatically
    out = tmp_path / "out"
    _fails(capsys, _train_args(workdir, out, "--resume_from_checkpoint", str(evil)), 1, "weights_only=True")
    assert not out.exists()
    last = out / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    markers.append(malicious_pickle(last, wrap=lambda p: {"global_step": 2, "invariant": p}))
    _fails(capsys, _train_args(workdir, out), 1, str(last), "weights_only=True")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["checkpoints", "checkpoints/last.ckpt"]
    # a model folder whose weights are a crafted pytorch_model.bin (transformers loads it weights_only)
    model = tmp_path / "model"
    save_tiny_model(model, "roberta")
    for f in model.glob("model.safetensors"):
        f.unlink()
    markers.append(malicious_pickle(model / "pytorch_model.bin", wrap=lambda p: {"weight": p}))
    argv = _train_args(workdir, tmp_path / "out2", "--model_name_or_path", str(model))
    _fails(capsys, argv, 1, "cannot load a masked LM")
    assert not (tmp_path / "out2").exists()
    assert not any(m.exists() for m in markers)


def test_non_finite_gradient_norm_is_an_error_outside_fp16_only(same_state):
    from invariant_lm._testing import args, batches, snapshot, tiny
    from invariant_lm.model import InvariantMLM
    from invariant_lm.trainer import InvariantTrainer, environment_update
    from lmlab.callbacks import NonFiniteLossError

    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["x"])
    trainer = InvariantTrainer(model, args(), tokenizer=tok)
    first = next(model.body.parameters())

    def poisoned(loss):  # a finite loss whose gradient overflows
        loss.backward()
        first.grad.fill_(float("inf"))

    before = snapshot(model)
    step_args = (model, "x", batches(tok, 1), trainer.body_opt, trainer.head_opts, trainer.body_sched)
    with pytest.raises(NonFiniteLossError, match="step 7: the gradient norm of the body and head"):
        environment_update(*step_args, trainer.head_scheds, backward=poisoned, update_number=7)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    _, norm, _ = environment_update(
        *step_args, trainer.head_scheds, backward=lambda t: poisoned(t), scaler=scaler
    )
    assert (
        not torch.isfinite(torch.tensor(norm)) and scaler.get_scale() == 2.0**15
    )  # fp16: an overflow, redone
    same_state(snapshot(model), before, "nothing stepped")
