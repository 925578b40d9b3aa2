"""Bad input never yields a result: each class (an unreadable config, an out-of-range value, a malformed table,
a checkpoint that would run code, a non-finite loss, a checkpoint of another model) gets one line naming the
problem, the right exit code, no traceback, and no run folder written."""

import json
from pathlib import Path

import datasets
import pytest
import torch
from headless_lm.cli import main
from lmlab.testing import save_tiny_model, tiny_tokenizer_dir


def _error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"headless-lm {command}: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _packed(path: Path, rows=16, length=17) -> Path:
    data = [[10 + (r + t) % 8 for t in range(length)] for r in range(rows)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": data})}).save_to_disk(str(path))
    return path


def _gpt(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    data = tmp_path / "d.hf" if (tmp_path / "d.hf").exists() else _packed(tmp_path / "d.hf")
    return [
        "gpt",
        "--dataset",
        str(data),
        "--hf_path",
        "tiny-gpt",
        "--model_max_seq_len",
        "32",
        "--gpu_bs",
        "4",
        "--global_bs",
        "4",
        "--device",
        "cpu",
        "--devices",
        "1",
        "--logger",
        "none",
        "--progress_bar",
        "false",
        "--warmup_steps",
        "0",
        "--val_every",
        "100",
        "--output_dir",
        str(out),
        *extra,
    ]


def _glue_dir(tmp_path: Path, train: str) -> Path:
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (folder / "train.tsv").write_text(header + train)
    (folder / "dev.tsv").write_text(header + "0\ta b\tc d\tentailment\n")
    return tmp_path / "glue"


OUTPUT_FLAG = {"preprocess": "--output", "lambada": "--output"}


@pytest.mark.parametrize("command", ["gpt", "mlm", "ft-gpt", "glue", "preprocess", "export", "lambada"])
def test_config_not_utf8_is_a_usage_error(tmp_path, capsys, command):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"learning_rate: 1\n\xff\xfe\x00binary")
    out = tmp_path / "run"
    assert main([command, "--config", str(bad), OUTPUT_FLAG.get(command, "--output_dir"), str(out)]) == 2
    assert "not UTF-8" in _error_line(capsys, command)
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "flag", "value", "expect"),
    [
        ("gpt", "--learning_rate", "-0.5", "> 0"),
        ("mlm", "--mask_prob", "1.5", "<= 1"),
        ("ft-gpt", "--warmup_steps", "-1", ">= 0"),
        ("glue", "--warmup_ratio", "5", "<= 1"),
        ("preprocess", "--val_fraction", "1", "< 1"),
    ],
)
def test_out_of_range_is_a_usage_error(tmp_path, capsys, command, flag, value, expect):
    out = tmp_path / "run"
    where = "--output" if command == "preprocess" else "--output_dir"
    extra = ["--model", "m"] if command == "glue" else []
    assert main([command, flag, value, where, str(out), *extra]) == 2
    line = _error_line(capsys, command)
    assert flag in line and expect in line and value in line
    assert not out.exists()


def test_preprocess_csv_with_an_extra_field_is_an_error(tmp_path, capsys):
    csv = tmp_path / "corpus.csv"
    # pandas would take the first column as an index and shift every column
    csv.write_text('id,text\n1,"first document",extra\n2,"second document"\n')
    out = tmp_path / "out.hf"
    args = ["preprocess", "--text_files", str(csv), "--hf_tokenizer", str(tiny_tokenizer_dir("gpt2"))]
    assert main([*args, "--output", str(out), "--max_seq_len", "4"]) == 1
    line = _error_line(capsys, "preprocess")
    assert "corpus.csv, line 2" in line and "3 fields" in line
    assert not out.exists()


def test_preprocess_counts_dropped_empty_documents(tmp_path, capsys):
    csv = tmp_path / "corpus.csv"
    csv.write_text('id,text\n1,"a first document with words"\n2,""\n3,"another document"\n')
    out = tmp_path / "out.hf"
    args = ["preprocess", "--text_files", str(csv), "--hf_tokenizer", str(tiny_tokenizer_dir("gpt2"))]
    assert main([*args, "--output", str(out), "--max_seq_len", "4"]) == 0
    assert "dropped 1 of 3 rows with an empty 'text'" in capsys.readouterr().err


def test_glue_ragged_row_is_an_error_before_anything_is_written(tmp_path, capsys):
    data = _glue_dir(tmp_path, "0\ta\tb\tentailment\n1\tc\td\tnot_entailment\tstray\n")
    model = save_tiny_model(tmp_path / "bert", "bert", "base")
    out = tmp_path / "res" / "glue"
    args = [
        "glue",
        "--model",
        str(model),
        "--tasks",
        "rte",
        "--data_dir",
        str(data),
        "--output_dir",
        str(out),
    ]
    assert main([*args, "--seeds", "0", "--device", "cpu"]) == 1
    line = _error_line(capsys, "glue")
    assert "train.tsv, line 3" in line and "5 fields" in line
    assert not (tmp_path / "res").exists()


def test_malicious_checkpoints_are_refused(tmp_path, capsys, malicious_pickle):
    evil = tmp_path / "evil.ckpt"
    marker = malicious_pickle(evil)
    assert main(["export", "--model_ckpt", str(evil), "--output_dir", str(tmp_path / "x")]) == 1
    assert "cannot load checkpoint" in _error_line(capsys, "export")
    assert main(["ft-gpt", *_gpt(tmp_path, tmp_path / "ft")[1:], "--ckpt_path", str(evil)]) == 1
    assert "cannot load checkpoint" in _error_line(capsys, "ft-gpt")
    assert main([*_gpt(tmp_path, tmp_path / "resumed"), "--resume", str(evil), "--max_steps", "1"]) == 1
    assert "cannot load checkpoint" in _error_line(capsys, "gpt")
    model = save_tiny_model(tmp_path / "bert", "bert", "base")  # a model folder with pickled weights
    for weights in model.glob("*.safetensors"):
        weights.unlink()
    glue_marker = malicious_pickle(model / "pytorch_model.bin", wrap=lambda payload: {"weight": payload})
    data = _glue_dir(tmp_path, "0\ta\tb\tentailment\n")
    args = ["glue", "--model", str(model), "--tasks", "rte", "--data_dir", str(data), "--device", "cpu"]
    assert main([*args, "--output_dir", str(tmp_path / "g")]) == 1
    assert "cannot load --model" in _error_line(capsys, "glue")
    causal = save_tiny_model(tmp_path / "gpt", "gpt_neox", "clm")
    for weights in causal.glob("*.safetensors"):
        weights.unlink()
    lambada_marker = malicious_pickle(causal / "pytorch_model.bin", wrap=lambda payload: {"weight": payload})
    passages = tmp_path / "lambada.txt"
    passages.write_text("the cat sat on the mat\n")
    args = ["lambada", "--model", str(causal), "--data_file", str(passages), "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "l" / "lambada.json")]) == 1
    assert "cannot load --model" in _error_line(capsys, "lambada")
    assert not marker.exists() and not glue_marker.exists() and not lambada_marker.exists()
    for run in ("x", "ft", "resumed", "g", "l"):
        assert not (tmp_path / run).exists(), run


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = _gpt(tmp_path, out, "--learning_rate", "1e30", "--max_steps", "6", "--last_every", "1")
    assert main([*args, "--gradient_clip", "0", "--emb_loss_weight", "1", "--lm_loss_weight", "1"]) == 1
    line = _error_line(capsys, "gpt")
    assert line.startswith("headless-lm gpt: error: step ") and "last.ckpt" in line
    assert "loss term 'emb_loss'" in line or "loss term 'lm_loss'" in line
    step = int(line.split("step ")[1].split(":")[0])
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == step - 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (out / "results.json").exists() and not (out / "DONE").exists()


def test_resume_from_another_model_is_refused_before_writing(tmp_path, capsys):
    first = tmp_path / "first"
    assert main([*_gpt(tmp_path, first), "--max_steps", "1"]) == 0
    other = tmp_path / "other"
    wide = tmp_path / "wide.json"
    from headless_lm.modeling import ARCHITECTURES

    wide.write_text(json.dumps({**ARCHITECTURES["tiny-gpt"], "hidden_size": 32, "intermediate_size": 64}))
    args = [*_gpt(tmp_path, other), "--hf_path", str(wide), "--max_steps", "2"]
    assert main([*args, "--resume", str(first / "checkpoints" / "last.ckpt")]) == 1
    assert "cannot resume" in _error_line(capsys, "gpt")
    assert not other.exists()
