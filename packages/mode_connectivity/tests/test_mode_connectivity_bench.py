"""bench on the tiny shape: both engines give the same losses and the in-place sweep has less overhead;
the console script's help and config handling."""

import json

from mode_connectivity.cli import main


def test_bench_sweep_tiny_both_engines(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--config", "tiny", "--n_eval", "8", "--points", "3", "--batch_size", "4", "--seq_len", "16",
            "--mode", "both", "--device", "cpu", "--output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    r = json.loads((out / "bench.json").read_text())
    assert r["config"] == "tiny" and r["same_losses"] is True
    assert r["naive"]["overhead_seconds_per_point"] > r["efficient"]["overhead_seconds_per_point"]
    assert r["efficient"]["seconds_per_point"] >= r["efficient"]["eval_seconds_per_point"]
    assert (out / "bench.md").read_text().startswith("# bench:")


def test_bench_sweep_adapter_interpolates_only_adapters(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--model_config", "tiny", "--n_eval", "4", "--points", "2", "--batch_size", "4",
            "--seq_len", "8", "--mode", "efficient", "--tune_method", "adapter", "--device", "cpu", "--output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    r = json.loads((out / "bench.json").read_text())
    assert r["interpolated_numbers"] == (2 * 2 + 3 * 2) * 2 * 64 * 12  # adapters of the tiny shape


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in (
        "train",
        "interpolate",
        "curve",
        "dist",
        "cartography-process",
        "glue-train",
        "glue-interpolate",
        "bench",
        "demo",
    ):
        assert cmd in text
    assert main(["interpolate", "--help"]) == 0
    assert "--load_PET_path_1" in capsys.readouterr().out
    assert main(["train", "--tune_method", "prompt"]) == 2
    assert "--tune_method must be one of" in capsys.readouterr().err
    assert main(["bench", "--config", "nope"]) == 2
