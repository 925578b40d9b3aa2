"""Every package's `bench --preset toy` writes rows in the one schema of `make bench-cpu` / `bench-gpu`, and
`lmlab.bench.collect` joins them into one table (issue 13)."""

import importlib
import json
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
KEYS = {
    "package", "measure", "method", "baseline", "method_median", "baseline_median", "method_range",
    "baseline_range", "rounds", "ratio", "target", "met", "environment",
}  # fmt: skip


def _main(pkg_dir: Path):
    target = next(
        iter(tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"]["scripts"].values())
    )
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


@pytest.fixture(scope="module")
def benches(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "toy"
    codes = {
        p.name: _main(p)(["bench", "--preset", "toy", "--output_dir", str(root / p.name)]) for p in PACKAGES
    }
    return root, codes


@pytest.mark.parametrize("pkg_dir", PACKAGES, ids=lambda p: p.name)
def test_toy_bench_rows_follow_the_schema(pkg_dir, benches):
    root, codes = benches
    assert codes[pkg_dir.name] == 0
    rows = json.loads((root / pkg_dir.name / "bench.json").read_text())
    assert rows, f"{pkg_dir.name} bench wrote no rows"
    for row in rows:
        assert set(row) >= KEYS, f"{pkg_dir.name}: missing {sorted(KEYS - set(row))}"
        assert row["rounds"] >= 3 and row["method_range"][0] <= row["method_median"] <= row["method_range"][1]
        assert row["met"] in (True, False, None) and row["environment"]["shapes"]


def test_collect_joins_all_packages(benches, capsys):
    from lmlab.bench import collect

    root, _ = benches
    rows = json.loads(collect(root, "toy").read_text())
    assert len({r["package"] for r in rows}) == len(PACKAGES)  # one name per package, every package present
    assert "| ratio |" in capsys.readouterr().out.splitlines()[0]
