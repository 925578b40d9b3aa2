"""Issue 13: `bench --preset toy` through the console entry writes lmlab's bench rows (interleaved rounds, medians,
min-max, ratio, target) and prints them; `train --compile true` compiles the body and trains as the eager run
does."""

import json

import pytest
import torch
from invariant_lm.cli import main
from lmlab.testing import save_tiny_model, write_environments
from safetensors.torch import load_file

KEYS = {"package", "measure", "method", "baseline", "method_median", "baseline_median", "method_range",
        "baseline_range", "rounds", "ratio", "target", "met"}  # fmt: skip


def test_bench_toy_rows_are_interleaved_medians_and_printed(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "toy", "--output_dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = json.loads((out / "bench.json").read_text())
    assert [r["method"] for r in rows] == ["IRM-games n=1, sparse heads", "IRM-games n=1, dense heads",
                                           "IRM-games n=4, sparse heads", "IRM-games n=4, dense heads"]  # fmt: skip
    for r in rows:
        assert set(r) >= KEYS and r["package"] == "invariant_lm" and r["baseline"] == "plain HF MLM"
        assert r["rounds"] >= 3
        for arm in ("method", "baseline"):
            lo, hi = r[f"{arm}_range"]
            assert 0 < lo <= r[f"{arm}_median"] <= hi
        assert r["ratio"] == pytest.approx(r["method_median"] / r["baseline_median"])
        assert r["target"] is None and r["met"] is None  # the targets are GPU figures (gpu preset)
        assert f"| {r['ratio']:.3f} |" in stdout  # the ratio is printed, not only written
        env = r["environment"]
        assert env["device"] == "cpu" and env["dtype"] == "fp32" and env["shapes"]["vocab"] == 300
    assert "| ratio |" in (out / "bench.md").read_text() and "tokens/s method" in stdout


def test_bench_gpu_preset_without_cuda_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "--preset", "gpu", "--device", "cpu", "--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "--preset gpu needs a CUDA device" in err.splitlines()[-1]
    assert main(["bench", "--preset", "huge"]) == 2


def test_compiled_training_equals_eager(tmp_path):
    from torch._dynamo.utils import counters

    save_tiny_model(tmp_path / "model", "roberta", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    write_environments(tmp_path / "envs", ("a", "b"), n=16)

    def train(compiled: bool):
        out = tmp_path / f"run-{compiled}"
        argv = ["train", "--model_name_or_path", str(tmp_path / "model"), "--train_file", str(tmp_path / "envs"),
                "--nb_steps", "4", "--learning_rate", "1e-3", "--output_dir", str(out), "--max_seq_length", "32",
                "--per_device_train_batch_size", "2", "--progress_bar", "false", "--logger", "none",
                "--device", "cpu", "--compile", str(compiled).lower()]  # fmt: skip
        assert main(argv) == 0
        return {
            **load_file(out / "model" / "model.safetensors"),
            **load_file(out / "model" / "heads.safetensors"),
        }

    counters.clear()
    eager = train(False)
    assert not counters["stats"]["unique_graphs"]
    compiled = train(True)
    assert counters["stats"]["unique_graphs"] >= 1  # the body went through torch.compile
    assert compiled.keys() == eager.keys()
    for k, v in eager.items():
        torch.testing.assert_close(compiled[k], v, rtol=1e-4, atol=1e-5, msg=k)
