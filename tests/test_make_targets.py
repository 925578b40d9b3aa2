"""`make help` lists every reproduce-* and bench-* target of every package with its text."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_lists_every_reproduce_and_bench_target_with_text():
    targets = []
    for mk in sorted(ROOT.glob("packages/*/make.mk")):
        targets += re.findall(r"^((?:reproduce|bench)-[\w-]+):", mk.read_text(), flags=re.M)
    assert len(targets) >= 10
    listing = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    described = dict(re.findall(r"^  (\S+)\s+(\S.*)$", listing, flags=re.M))
    for target in targets:
        assert described.get(target, "").strip(), (
            f"make help does not describe {target}; add '## text' to its rule"
        )
