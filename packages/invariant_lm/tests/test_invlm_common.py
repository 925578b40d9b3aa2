"""Issue 14: `invariant-lm train` under the common contract: lmlab's flags with the reference spellings as
aliases, --accumulate_grad_batches as micro-batches per update (resuming bit-exactly with dropout on),
--val_check_interval evaluating during training, the run folder closed by finish_run (model/ loads with the
Auto classes), and a checkpoint without the masked-LM head refused in one line."""

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
    root = tmp_path_factory.mktemp("invlm_common")
    save_tiny_model(root / "model", "roberta", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    save_tiny_model(root / "bert_base", "bert", "base")  # a BertModel folder: no masked-LM head
    write_environments(root / "envs", ("b_env", "a_env"), n=24)
    write_text_corpus(root, "valid.txt", n=8)
    return root


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(root / "model"), "--train_file", str(root / "envs"),
            "--validation_file", str(root / "valid.txt"), "--do_train", "--do_eval", "--nb_steps", "4",
            "--learning_rate", "1e-3", "--output_dir", str(out), "--seed", "5", "--max_seq_length", "32",
            "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--progress_bar", "false",
            "--logger", "none", "--device", "cpu", *extra]  # fmt: skip


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]


def test_reference_spellings_are_aliases_and_a_conflict_is_a_usage_error(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _args(workdir, out, "--gradient_accumulation_steps", "3", "--logging_steps", "7", "--save_steps",
                 "9", "--resume_from_checkpoint", "never", "--overwrite_output_dir", "--print_config")  # fmt: skip
    assert main(argv) == 0
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["accumulate_grad_batches"], cfg["log_every_n_steps"], cfg["checkpoint_every_n_steps"]) == (
        3,
        7,
        9,
    )
    assert cfg["resume"] == "never" and cfg["overwrite"] is True
    assert (
        main(_args(workdir, out, "--gradient_accumulation_steps", "2", "--accumulate_grad_batches", "3")) == 2
    )
    assert "set the same option (accumulate_grad_batches)" in _last_error(capsys)
    assert not out.exists()


def test_a_checkpoint_without_the_mlm_head_is_refused_in_one_line(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _args(workdir, out, "--model_name_or_path", str(workdir / "bert_base"), "--tokenizer_name",
                 str(workdir / "model"), "--nb_steps", "2")  # fmt: skip
    assert main(argv) == 1
    line = _last_error(capsys)
    assert (
        "without the masked-LM head" in line and "cls.predictions" in line and "--allow_random_head" in line
    )
    assert not out.exists()
    assert main([*argv, "--allow_random_head", "true"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "RANDOM" in err and "LOAD REPORT" not in err
    assert (out / "DONE").is_file()


def test_accumulation_is_micro_batches_per_update_and_resumes_exactly(workdir, tmp_path, monkeypatch):
    """2 micro-batches per update (2 Lightning steps each, each its own dropout key); killed before update 4
    twice, the second time right after resuming from update 2: the checkpoint is still the one between
    updates 2 and 3 (not one taken half-way through update 3), and the run then finishes equal to an
    uninterrupted one, bit for bit."""
    import lmlab.training
    import pytorch_lightning as pl

    class Killed(RuntimeError):
        pass

    class Watch(pl.Callback):
        def __init__(self, kill_at=None):
            self.kill_at, self.batches = kill_at, 0

        def on_train_batch_start(self, trainer, pl_module, batch, i):
            if self.kill_at is not None and trainer.global_step == self.kill_at - 1:
                raise Killed(f"before update {self.kill_at}")
            self.batches += 1

    build = lmlab.training.build_trainer
    watches = []

    def build_with(kill_at):
        def make(*a, callbacks=(), **kw):
            watches.append(Watch(kill_at))
            return build(*a, callbacks=[*callbacks, watches[-1]], **kw)

        return make

    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("--accumulate_grad_batches", "2", "--checkpoint_every_n_steps", "2", "--log_every_n_steps", "1")
    monkeypatch.setattr(lmlab.training, "build_trainer", build_with(None))
    assert main(_args(workdir, full, *extra)) == 0
    assert watches[-1].batches == 8  # 4 updates x 2 micro-batches
    for _ in range(2):
        monkeypatch.setattr(lmlab.training, "build_trainer", build_with(4))
        assert main(_args(workdir, part, *extra)) == 1
        ckpt = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
        ticks = [v["micro_batches"] for k, v in ckpt["callbacks"].items() if "ExactResume" in k]
        assert ckpt["global_step"] == 2 and ticks == [4]
    monkeypatch.setattr(lmlab.training, "build_trainer", build_with(None))
    assert main(_args(workdir, part, *extra)) == 0
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (part, full))
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        for x, y in zip(torch.utils._pytree.tree_leaves(a[key]), torch.utils._pytree.tree_leaves(b[key])):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, key
    rows = read_jsonl(part / "metrics.jsonl")
    assert rows == read_jsonl(full / "metrics.jsonl") and [r["step"] for r in rows] == [0, 1, 2, 3]


def test_val_check_interval_evaluates_during_training_and_model_loads_with_auto_classes(workdir, tmp_path):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "erm"
    argv = _args(workdir, out, "--mode", "erm", "--val_check_interval", "2", "--log_every_n_steps", "1")
    assert main(argv) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "eval_perplexity" in r] == [1, 3]  # after updates 2 and 4
    results = json.loads((out / "results.json").read_text())
    assert rows[-1]["eval_perplexity"] == next(iter(results["eval"].values()))["perplexity"]
    # one head folds exactly into a standard masked LM: model/ computes the invariant model's logits
    hf = AutoModelForMaskedLM.from_pretrained(out / "model").eval()
    inv = InvariantMLM.from_pretrained(out).eval()
    x = torch.randint(5, 200, (2, 9))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=x).logits, inv(input_ids=x).logits, atol=1e-5)
