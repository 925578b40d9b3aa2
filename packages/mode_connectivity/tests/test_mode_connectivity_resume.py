"""Issue 12 in mode-connectivity: every training command (train full FT and adapter, curve, layer-mix,
glue-train) killed after a checkpoint and run again ends bit-exactly where an uninterrupted run ends, dropout on
and answers picked at random from multi-answer rows; bad inputs are one-line errors that write no run folder;
a non-finite loss stops training with nothing written after it; crafted pickles are refused."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lmlab.logging import read_jsonl
from mode_connectivity import curve_train, glue, layer_mix, train
from mode_connectivity.cli import main
from mode_connectivity.data import EncodedSplit, TextTaskOptions, TrainDataset, load_split
from mode_connectivity.make_tiny import build_roberta, build_t5, build_tokenizer, synthetic_tasks, write_glue
from mode_connectivity.models import build_for_method, load_tokenizer, save_checkpoint

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
QUIET = ["--progress_bar", "false", "--logger", "none", "--log_every_n_steps", "1"]
# 3 updates, a resumable checkpoint every 2: the killed run dies after update 3, so update 3 is replayed
STEPS = ["--checkpoint_every_n_steps", "2", "--do_valid", "false", "--do_predict", "false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny T5 with dropout 0.1 and a task whose train rows have three answers each."""
    root = tmp_path_factory.mktemp("mc_resume")
    tok = build_tokenizer(root / "model")
    build_t5(root / "model", tok, d_model=32, num_layers=1, num_heads=2, d_ff=32, seed=0, dropout=0.1)
    task = Path(synthetic_tasks(root / "data", n_train=16, n_eval=4, seed=0)["tiny-nli"])
    train_file = task / "tiny-nli_train.tsv"
    rows = [line.split("\t") for line in train_file.read_text().splitlines() if line.strip()]
    labels = ["entailment", "neutral", "contradiction"]
    train_file.write_text("".join(f"{text}\t{gold}\t" + "\t".join(labels) + "\n" for text, gold in rows))
    return {"root": root, "model": str(root / "model"), "task": str(task)}


def _kill_at(monkeypatch, module, step):
    """Make `module`'s next trainer die right after update `step` (a stand-in for a SIGKILL)."""

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == step:
                raise RuntimeError("killed")

    real = module.build_trainer

    def build(*args, callbacks=(), **kwargs):
        return real(*args, callbacks=[*callbacks, Kill()], **kwargs)

    monkeypatch.setattr(module, "build_trainer", build)
    return real


def _tensors(obj, prefix=""):
    """Every tensor of a (nested) checkpoint structure by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    out = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        out.update(_tensors(v, f"{prefix}/{k}"))
    return out


def _assert_same_run(full: Path, resumed: Path):
    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3
    ta = _tensors({"state_dict": a["state_dict"], "optimizer_states": a["optimizer_states"]})
    tb = _tensors({"state_dict": b["state_dict"], "optimizer_states": b["optimizer_states"]})
    assert ta.keys() == tb.keys() and len(ta) > 1
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"
    steps_a = [r["step"] for r in read_jsonl(full / "metrics.jsonl") if "train_loss" in r]
    steps_b = [r["step"] for r in read_jsonl(resumed / "metrics.jsonl") if "train_loss" in r]
    assert steps_b == steps_a == sorted(set(steps_a)) and len(steps_a) == 3


def _run_killed_and_resumed(monkeypatch, module, args, out):
    _kill_at(monkeypatch, module, 3)
    assert main(args(out)) == 1  # killed after update 3; last.ckpt holds update 2
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    monkeypatch.undo()
    assert main(args(out)) == 0


@pytest.mark.parametrize("method", ["model", "adapter"])
def test_train_resumes_bit_exactly(tiny, tmp_path, monkeypatch, method):
    def args(out, *extra):
        return [
            "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", method,
            "--adapter_size", "4", "--learning_rate_list", "1e-2", "--bsz_list", "4", "--train_iters", "3",
            "--output_dir", str(out), *STEPS, *QUIET, *SMALL, *extra,
        ]  # fmt: skip

    assert main(args(tmp_path / "full")) == 0
    _run_killed_and_resumed(monkeypatch, train, args, tmp_path / "part")
    _assert_same_run(tmp_path / "full", tmp_path / "part")


def test_answer_pick_is_keyed_on_the_stream_position(tiny):
    tok = load_tokenizer(tiny["model"])
    split = EncodedSplit(load_split(tiny["task"], "train"), tok, "tiny-nli", TextTaskOptions(48, 8))
    a, b = TrainDataset(split, seed=20), TrainDataset(split, seed=20)
    picks = [a[(pos, 0)][1] for pos in range(40)]
    assert picks == [b[(pos, 0)][1] for pos in reversed(range(40))][::-1]  # order of access does not matter
    assert len({tuple(p) for p in picks}) == 3  # each of the three answers is drawn
    assert [TrainDataset(split, seed=21)[(pos, 0)][1] for pos in range(40)] != picks


def _endpoints(tiny):
    """Two adapter checkpoints (different seeds) to train a curve / mixture between."""
    from types import SimpleNamespace

    paths = []
    for seed in (1, 2):
        cfg = SimpleNamespace(
            model=tiny["model"], tune_method="adapter", adapter_type="houlsby", adapter_size=4, r_mean=0.0,
            r_std=0.5, lora_r=2, lora_alpha=16, num_virtual_tokens=3, prefix_projection=False,
        )  # fmt: skip
        path = tiny["root"] / f"endpoint{seed}"
        if not path.is_dir():
            save_checkpoint(path, build_for_method(cfg, seed=seed), "adapter", {"step": 0})
        paths.append(str(path))
    return paths


def test_curve_resumes_bit_exactly(tiny, tmp_path, monkeypatch):
    p1, p2 = _endpoints(tiny)

    def args(out):
        return [
            "curve", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter",
            "--adapter_size", "4", "--load_stage1_pet_path_list", p1, p2, "--bend_num", "1", "--bsz_list", "4",
            "--train_iters", "3", "--valid_interval", "2", "--valid_t", "0.5", "--itpl_points", "2", "--t_samples",
            "2", "--eval_mode", "rank", "--learning_rate_list", "1e-2", "--do_predict", "false",
            "--checkpoint_every_n_steps", "2", "--output_dir", str(out), *QUIET, *SMALL,
        ]  # fmt: skip

    assert main(args(tmp_path / "full")) == 0
    _run_killed_and_resumed(monkeypatch, curve_train, args, tmp_path / "part")
    _assert_same_run(tmp_path / "full", tmp_path / "part")


def test_layer_mix_resumes_bit_exactly(tiny, tmp_path, monkeypatch):
    p1, p2 = _endpoints(tiny)

    def args(out):
        return [
            "layer-mix", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter",
            "--adapter_size", "4", "--load_stage1_pet_path_list", p1, p2, "--train_iters", "3", "--bsz", "4",
            "--do_valid", "false", "--do_predict", "false", "--checkpoint_every_n_steps", "2",
            "--output_dir", str(out), *QUIET, *SMALL,
        ]  # fmt: skip

    assert main(args(tmp_path / "full")) == 0
    _run_killed_and_resumed(monkeypatch, layer_mix, args, tmp_path / "part")
    _assert_same_run(tmp_path / "full", tmp_path / "part")


@pytest.fixture(scope="module")
def glue_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc_resume_glue")
    model = build_roberta(root / "roberta", seed=0, hidden=32, layers=1, heads=2)  # hidden dropout 0.1
    return {"model": str(model), "data": write_glue(root / "glue", n_train=16, n_eval=4, seed=0)}


def _glue_args(glue_data, out, *extra, task="sst2"):
    return [
        "glue-train", "--task_name", task, "--data_dir", str(glue_data["data"][task]),
        "--model_name_or_path", glue_data["model"], "--learning_rate", "3e-3", "--max_steps", "3",
        "--eval_steps", "100", "--save_steps", "100", "--per_device_train_batch_size", "4",
        "--checkpoint_every_n_steps", "2", "--output_dir", str(out), *QUIET, "--device", "cpu", *extra,
    ]  # fmt: skip


def test_glue_train_resumes_bit_exactly(glue_data, tmp_path, monkeypatch):
    assert main(_glue_args(glue_data, tmp_path / "full")) == 0
    _run_killed_and_resumed(monkeypatch, glue, lambda out: _glue_args(glue_data, out), tmp_path / "part")
    _assert_same_run(tmp_path / "full", tmp_path / "part")


def _one_error_line(capsys, rc_expected, rc, *needles):
    err = capsys.readouterr().err  # besides progress bars (Loading weights ...)
    assert rc == rc_expected, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], err
    return errors[0]


def test_bad_inputs_are_one_line_and_write_no_run_folder(tiny, glue_data, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--task_dir", tiny["task"], "--model", tiny["model"], "--output_dir", str(out), *SMALL]
    binary = tmp_path / "bad.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    _one_error_line(capsys, 2, main([*base, "--config", str(binary)]), "not UTF-8")
    _one_error_line(capsys, 2, main([*base, "--warmup_rate", "5"]), "--warmup_rate must be >= 0, <= 1, got 5")
    _one_error_line(capsys, 2, main([*base, "--max_grad_norm", "-1"]), "--max_grad_norm must be >= 0")
    _one_error_line(capsys, 2, main([*base, "--learning_rate_list", "-0.5"]), "--learning_rate_list")
    lm = ["layer-mix", "--task_dir", tiny["task"], "--model", tiny["model"], "--output_dir", str(out)]
    _one_error_line(capsys, 2, main([*lm, "--learning_rate", "-0.5"]), "--learning_rate must be > 0")
    _one_error_line(capsys, 2, main(_glue_args(glue_data, out, "--learning_rate", "-1")), "> 0, got -1")
    # bad files: exit 1, nothing written
    no_test = tmp_path / "tiny-nli"
    no_test.mkdir()
    for split in ("train", "dev"):
        (no_test / f"tiny-nli_{split}.tsv").write_text(
            (Path(tiny["task"]) / f"tiny-nli_{split}.tsv").read_text()
        )
    _one_error_line(capsys, 1, main([*base[:2], str(no_test), *base[3:]]), "no test split")
    _one_error_line(
        capsys, 1, main([*base[:4], str(tmp_path / "nowhere"), *base[5:]]), "nowhere is not a local"
    )
    p1, p2 = _endpoints(tiny)
    curve = ["curve", "--task_dir", tiny["task"], "--model", tiny["model"], "--output_dir", str(out), *SMALL]
    _one_error_line(
        capsys, 1, main([*curve, "--tune_method", "lora", "--load_stage1_pet_path_list", p1, p2]), "kind"
    )
    _one_error_line(
        capsys, 1, main([*curve, "--tune_method", "adapter", "--adapter_size", "4", "--do_train", "false",
                         "--load_stage1_pet_path_list", p1, p2]), "no checkpoint-best",
    )  # fmt: skip
    ragged = tmp_path / "ragged"
    ragged.mkdir()
    (ragged / "train.csv").write_text("sentence,label\na good film,1,extra\nbad,0\n")
    glue_bad = _glue_args(glue_data, out)
    glue_bad[glue_bad.index("--data_dir") + 1] = str(ragged)
    _one_error_line(capsys, 1, main(glue_bad), "train.csv, line 2", "3 fields")
    (ragged / "train.csv").write_text('sentence,label\n"",1\nbad,0\n')
    _one_error_line(capsys, 1, main(glue_bad), "row 1", "'sentence' is empty")
    (ragged / "train.csv").write_text("sentence,label\ngood,nan\nbad,0\n")
    _one_error_line(capsys, 1, main(glue_bad), "label 'nan' is not one of sst2's")
    assert not out.exists()


def test_non_finite_loss_stops_with_one_line_and_writes_nothing_after(tiny, tmp_path, capsys):
    out = tmp_path / "nan"
    args = [
        "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--learning_rate_list", "1e30",
        "--bsz_list", "4", "--train_iters", "6", "--max_grad_norm", "0", "--output_dir", str(out),
        "--checkpoint_every_n_steps", "1", *STEPS[2:], *QUIET, *SMALL,
    ]  # fmt: skip
    err = _one_error_line(capsys, 1, main(args), "training stopped", "last.ckpt")
    assert err.split("error: ")[1].startswith("step ")
    job = out
    step = int(err.split("error: step ")[1].split(":")[0])
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step - 1  # the last good update is the resume point
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (job / "model").exists() and not (job / "DONE").exists()
    assert not (out / "results.json").exists()
    # curve names the sampled t whose loss is non-finite, and writes no control points or results
    p1, p2 = _endpoints(tiny)
    curve = [
        "curve", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter",
        "--adapter_size", "4", "--load_stage1_pet_path_list", p1, p2, "--bend_num", "1", "--bsz_list", "4",
        "--train_iters", "4", "--valid_interval", "100", "--itpl_points", "2", "--learning_rate_list", "1e30",
        "--do_predict", "false", "--output_dir", str(tmp_path / "curve"), *QUIET, *SMALL,
    ]  # fmt: skip
    _one_error_line(capsys, 1, main(curve), ": loss term 'loss at t=0.", "is nan", "training stopped")
    assert not list((tmp_path / "curve").glob("checkpoint-*")) and not (tmp_path / "curve" / "DONE").exists()


def test_crafted_pickles_are_refused(tiny, tmp_path, capsys, malicious_pickle):
    evil = tmp_path / "evil.pt"
    evil_marker = malicious_pickle(evil, wrap=lambda payload: {"adapter": payload})
    evaluate = [
        "evaluate", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter",
        "--adapter_size", "4", "--load_PET_path", str(evil), "--output_dir", str(tmp_path / "e"), *SMALL,
    ]  # fmt: skip
    _one_error_line(capsys, 1, main(evaluate), "objects other than tensors")
    assert not evil_marker.exists() and not (tmp_path / "e").exists()
    ckpt = tmp_path / "evil.ckpt"
    marker = malicious_pickle(ckpt)
    resume = [
        "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--train_iters", "1", "--bsz_list", "4",
        "--resume", str(ckpt), "--output_dir", str(tmp_path / "t"), *STEPS[2:], *QUIET, *SMALL,
    ]  # fmt: skip
    _one_error_line(capsys, 1, main(resume))
    assert not marker.exists()
    dist = ["dist", "--input1", str(evil), "--input2", str(evil), "--type", "adapter"]
    _one_error_line(capsys, 1, main(dist), "objects other than tensors")
    assert not evil_marker.exists()
