"""Exact resume of every training command (gpt, mlm, ft-gpt, glue) with dropout on: a run interrupted after a
checkpoint and run again ends with the same weights, optimizer state and metrics.jsonl as an uninterrupted one
(compared with torch.equal); each step appears once in metrics.jsonl."""

import json
from pathlib import Path

import datasets
import torch
from headless_lm.cli import main
from headless_lm.modeling import ARCHITECTURES
from headless_lm.train import HeadlessLMModule
from lmlab.logging import read_jsonl
from lmlab.testing import tiny_tokenizer_dir


class Interrupted(RuntimeError):
    pass


def _cyclic(path: Path, rows=48, length=17, offset=10) -> Path:
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 8, (rows,), generator=g)
    data = [[offset + (int(s) + t) % 8 for t in range(length)] for s in starts]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": data})}).save_to_disk(str(path))
    return path


def _dropout_gpt(path: Path) -> Path:
    arch = {**ARCHITECTURES["tiny-gpt"], "hidden_dropout": 0.1, "attention_dropout": 0.1}
    path.write_text(json.dumps(arch))
    return path


def _common(out: Path, steps: int) -> list[str]:
    return [
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--devices",
        "1",
        "--device",
        "cpu",
        "--logger",
        "none",
        "--progress_bar",
        "false",
        "--log_every_n_steps",
        "1",
        "--last_every",
        "2",
        "--ckpt_every",
        "100",
        "--val_every",
        "3",
        "--val_batches",
        "1",
        "--warmup_steps",
        "1",
        "--learning_rate",
        "3e-3",
    ]


def _gpt_args(tmp_path: Path, out: Path, steps: int) -> list[str]:
    return [
        "--dataset",
        str(_cyclic(tmp_path / "gpt.hf") if not (tmp_path / "gpt.hf").exists() else tmp_path / "gpt.hf"),
        "--hf_path",
        str(_dropout_gpt(tmp_path / "arch.json")),
        "--model_max_seq_len",
        "32",
        "--gpu_bs",
        "4",
        "--global_bs",
        "8",  # two micro-batches per step: the micro-batch count is what ExactResume keys on
        "--emb_loss_weight",
        "1",
        "--lm_loss_weight",
        "0.5",
        *_common(out, steps),
    ]


def _interrupt_at(monkeypatch, step: int) -> None:
    def hook(self, *args):
        if self.trainer.global_step == step:
            raise Interrupted(f"simulated kill after step {step}")

    monkeypatch.setattr(HeadlessLMModule, "on_train_batch_end", hook, raising=False)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weight {key} differs after resume"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][index][name])), (
                    f"optimizer state {index}.{name} differs after resume"
                )
    assert a["lr_schedulers"] == b["lr_schedulers"]


def _rows(run: Path) -> list[dict]:
    # wall-clock columns differ between any two runs; everything else must repeat exactly
    return [{k: v for k, v in r.items() if "elapsed" not in k} for r in read_jsonl(run / "metrics.jsonl")]


def _check_resume(tmp_path, monkeypatch, command: str, args_for, steps: int, stop_after: int) -> None:
    full, cut = tmp_path / f"{command}-full", tmp_path / f"{command}-cut"
    assert main([command, *args_for(full, steps)]) == 0
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_after)
        assert main([command, *args_for(cut, steps)]) == 1
    assert (
        _load(cut / "checkpoints" / "last.ckpt")["global_step"] < stop_after
    )  # resumes from before the stop
    assert main([command, *args_for(cut, steps)]) == 0
    _assert_same_state(_load(full / "checkpoints" / "last.ckpt"), _load(cut / "checkpoints" / "last.ckpt"))
    rows_full, rows_cut = _rows(full), _rows(cut)
    steps_logged = [r["step"] for r in rows_cut if "train/loss" in r]
    assert steps_logged == list(range(steps)), "each step once in metrics.jsonl"
    assert rows_cut == rows_full


def test_gpt_resumes_exactly_with_dropout(tmp_path, monkeypatch):
    _check_resume(tmp_path, monkeypatch, "gpt", lambda out, n: _gpt_args(tmp_path, out, n), 5, 3)


def test_mlm_resumes_exactly_with_dropout(tmp_path, monkeypatch):
    data = _cyclic(tmp_path / "mlm.hf", rows=24, length=32, offset=20)
    tok = tiny_tokenizer_dir("roberta")

    def args(out, n):
        return [
            "--dataset",
            str(data),
            "--hf_tokenizer",
            str(tok),
            "--hf_path",
            "tiny-bert",  # BERT's hidden and attention dropout 0.1
            "--max_seq_len",
            "16",
            "--model_max_seq_len",
            "32",
            "--gpu_bs",
            "4",
            "--global_bs",
            "4",
            "--emb_loss_weight",
            "1",
            "--mlm_loss_weight",
            "1",
            *_common(out, n),
        ]

    _check_resume(tmp_path, monkeypatch, "mlm", args, 5, 3)


def test_ft_gpt_resumes_exactly_with_dropout(tmp_path, monkeypatch):
    source = tmp_path / "headless"
    headless = [*_gpt_args(tmp_path, source, 1), "--lm_loss_weight", "0"]
    assert main(["gpt", *headless]) == 0

    def args(out, n):
        gpt = _gpt_args(tmp_path, out, n)
        gpt = gpt[: gpt.index("--emb_loss_weight")] + gpt[gpt.index("--lm_loss_weight") + 2 :]
        return [*gpt, "--ckpt_path", str(source / "checkpoints" / "last.ckpt")]

    _check_resume(tmp_path, monkeypatch, "ft-gpt", args, 5, 3)


def test_glue_resumes_exactly_with_dropout(tmp_path, monkeypatch):
    from headless_lm.eval.glue import GlueModule
    from lmlab.data import sample_path
    from lmlab.testing import save_tiny_model

    model = save_tiny_model(
        tmp_path / "bert", "bert", "base"
    )  # hidden and attention dropout 0.1, + the head's
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "glue" / "MRPC" / f"{split}.tsv").write_text(
            sample_path(f"glue/mrpc/{split}.tsv").read_text()
        )

    def args(name):
        return [
            "glue",
            "--model",
            str(model),
            "--tasks",
            "mrpc",
            "--seeds",
            "3",
            "--epochs",
            "2",
            "--batch_size",
            "2",  # 6 training rows: 3 steps an epoch, 6 in all
            "--learning_rate",
            "1e-3",
            "--checkpoint_every_n_steps",
            "2",
            "--keep_checkpoints",
            "--log_every_n_steps",
            "1",
            "--data_dir",
            str(tmp_path / "glue"),
            "--output_dir",
            str(tmp_path / name),
            "--device",
            "cpu",
        ]

    assert main(args("full")) == 0
    with (
        monkeypatch.context() as patch
    ):  # killed at step 5: after epoch 1's dev score and the step-4 checkpoint

        def hook(self, *rest):
            if self.trainer.global_step == 5:
                raise Interrupted("simulated kill")

        patch.setattr(GlueModule, "on_train_batch_end", hook, raising=False)
        assert main(args("cut")) == 1
    run = tmp_path / "cut" / "mrpc" / "seed3"
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (tmp_path / "cut" / "results.json").exists()
    assert main(args("cut")) == 0
    a = _load(tmp_path / "full" / "mrpc" / "seed3" / "checkpoints" / "last.ckpt")
    b = _load(run / "checkpoints" / "last.ckpt")
    _assert_same_state(a, b)
    assert len(b["dev_history"]) == 2 and a["dev_history"] == b["dev_history"]
    full, cut = (
        json.loads((tmp_path / "full" / "results.json").read_text()),
        json.loads((tmp_path / "cut" / "results.json").read_text()),
    )
    assert cut["per_epoch"] == full["per_epoch"]
    assert _rows(run) == _rows(tmp_path / "full" / "mrpc" / "seed3")
    assert [r["step"] for r in _rows(run) if "train/loss" in r] == list(range(6)), "each step once"
    assert [r["step"] for r in _rows(run) if "dev/score" in r] == [2, 5]  # after epochs 1 and 2
    # a finished (task, seed) is not trained again: its dev scores are read back (--overwrite: DONE is there)
    (run / "checkpoints" / "last.ckpt").unlink()
    assert main(args("cut")) == 1
    assert main([*args("cut"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["per_epoch"] == full["per_epoch"]
