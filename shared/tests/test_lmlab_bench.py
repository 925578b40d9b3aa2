"""lmlab.bench: interleaved rounds, medians and ranges, ratio against the target, the conditions written beside."""

import json

import pytest
from lmlab.bench import comparison, environment, interleave, write_bench
from lmlab.errors import LmlabError


def test_interleave_rotates_the_arms_after_warm_up():
    calls = []
    arms = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = interleave(arms, rounds=3, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(LmlabError, match="rounds >= 1"):
        interleave(arms, rounds=0)


def test_comparison_uses_medians_and_says_whether_the_target_is_met():
    times = {"method": [1.0, 9.0, 1.2, 1.1, 1.3], "baseline": [1.0, 1.0, 1.1, 0.9, 5.0]}
    row = comparison("p", "step", "method", "baseline", times, target="<= 1.12", peak_gb=3.5)
    assert (
        row["method_median"] == 1.2 and row["baseline_median"] == 1.0
    )  # the outliers 9.0 and 5.0 do not count
    assert row["method_range"] == [1.0, 9.0] and row["baseline_range"] == [0.9, 5.0] and row["rounds"] == 5
    assert row["ratio"] == pytest.approx(1.2) and row["met"] is False and row["peak_gb"] == 3.5
    fast = comparison("p", "tokens/s", "method", "baseline", times, target=">= 0.8", speedup=True)
    assert fast["ratio"] == pytest.approx(1 / 1.2) and fast["met"] is True
    assert comparison("p", "x", "method", "baseline", times)["met"] is None
    with pytest.raises(LmlabError, match="target reads like"):
        comparison("p", "x", "method", "baseline", times, target="1.1x")


def test_write_bench_records_conditions_with_every_row(tmp_path, capsys):
    times = {"a": [2.0, 2.0], "b": [1.0, 1.0]}
    env = environment("cpu", "fp32", {"batch": 2, "seq": 16})
    path = write_bench([comparison("p", "m", "a", "b", times, target="<= 2")], env, tmp_path, "cpu")
    (row,) = json.loads(path.read_text())
    assert (
        row["ratio"] == 2.0 and row["met"] is True and row["environment"]["shapes"] == {"batch": 2, "seq": 16}
    )
    assert row["environment"]["threads"] >= 1 and "torch" in row["environment"]["versions"]
    printed = capsys.readouterr().out
    assert (
        "device cpu, fp32" in printed
        and "| p | m | a | b | 2 (2-2) | 1 (1-1) | 2 | 2.000 | <= 2 | yes |" in printed
    )
    assert (tmp_path / "cpu.md").read_text() == printed


def test_collect_joins_every_package_into_one_table(tmp_path, capsys):
    from lmlab.bench import collect

    env = environment("cpu", "fp32", {"batch": 1})
    for package, ratio in (("a", 2.0), ("b", 0.5)):
        times = {"m": [ratio], "base": [1.0]}
        write_bench(
            [comparison(package, "step", "m", "base", times, target="<= 1")],
            env,
            tmp_path / "cpu" / package,
            "bench",
        )
    capsys.readouterr()
    rows = json.loads(collect(tmp_path / "cpu", "cpu").read_text())
    assert [(r["package"], r["ratio"], r["met"]) for r in rows] == [("a", 2.0, False), ("b", 0.5, True)]
    table = (tmp_path / "cpu.md").read_text()
    assert table == capsys.readouterr().out and "| a | step |" in table and "- b: device cpu" in table
    with pytest.raises(LmlabError, match="no \\*/bench.json"):
        collect(tmp_path / "empty", "cpu")
