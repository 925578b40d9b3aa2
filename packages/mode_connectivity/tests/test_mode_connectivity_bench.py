"""bench (issue 13): `bench --preset toy` through the console entry times the in-place sweep, the reload per point
and the evaluation in interleaved rounds and writes rows in the schema of `make bench-cpu`/`bench-gpu` for the
full model and for adapters, with the same losses on both paths; the console script's help and config handling."""

import json

from mode_connectivity.cli import main

KEYS = {
    "package", "measure", "method", "baseline", "method_median", "baseline_median", "method_range",
    "baseline_range", "rounds", "ratio", "target", "met", "environment",
}  # fmt: skip


def test_bench_toy_rows_interleaved_for_model_and_adapters(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "toy", "--output_dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = json.loads((out / "bench.json").read_text())
    assert [r["tune_method"] for r in rows] == ["model"] * 3 + ["adapter"] * 3
    for r in rows:
        assert set(r) >= KEYS and r["package"] == "mode_connectivity"
        assert r["rounds"] == 4  # one interleaved round per grid point of the toy preset
        for arm in ("method", "baseline"):
            lo, hi = r[f"{arm}_range"]
            assert 0 < lo <= r[f"{arm}_median"] <= hi
        assert r["same_losses"] is True and r["max_loss_diff"] < 1e-3
        env = r["environment"]
        assert env["device"] == "cpu" and env["dtype"] == "fp32" and env["shapes"]["preset"] == "toy"
        assert f"{r['ratio']:.3f}" in stdout  # the ratio is printed, not only written
    over, per_point, fraction = rows[:3]
    # the overhead and per-point rows are speed-ups (baseline / method); the fraction is sweep / evaluation
    assert over["ratio"] == over["baseline_median"] / over["method_median"] > 1
    assert (over["method"], over["baseline"], over["target"]) == ("in-place sweep", "reload per point", None)
    assert per_point["ratio"] == per_point["baseline_median"] / per_point["method_median"]
    assert per_point["target"] == "> 1" and per_point["met"] == (per_point["ratio"] > 1)
    assert fraction["ratio"] == fraction["method_median"] / fraction["baseline_median"]
    assert fraction["baseline"] == "evaluation" and fraction["target"] == "<= 0.05"
    assert rows[3]["interpolated_numbers"] == (2 * 2 + 3 * 2) * 2 * 64 * 12  # only the tiny shape's adapters
    assert rows[0]["interpolated_numbers"] > 10 * rows[3]["interpolated_numbers"]  # the whole state dict
    assert "| ratio |" in stdout and (out / "bench.md").read_text().startswith("device cpu, fp32")


def test_bench_bad_input_is_one_line(capsys):
    assert main(["bench", "--points", "2"]) == 2
    assert "--points must be -1 (the preset's) or at least 3" in capsys.readouterr().err
    assert main(["bench", "--dtype", "bf16", "--device", "cpu"]) == 2
    assert "--dtype bf16" in capsys.readouterr().err


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
