"""Issue 11: PAPERS.md and each package README show the same claims, with the ids the issue requires.

Both tables are printed from `results/<paper>/claims.json` (`python -m lmlab.claims`, `make papers`), so a claim
row of a package README must appear in PAPERS.md word for word (numbers and verdict), and every required claim
id must be there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "camels": {"camels_vs_uniform", "camels_vs_ssm", "camels_vs_tfidf", "oracle_vs_uniform"},
    "invariant_lm": {"irm_noise_clean", "irm_noise_noisy", "irm_clean_ppl", "erm_learns_noise"},
    "diito": {"diito_vs_standard", "diito_vs_equal_weight", "teacher_iia"},
    "headless_lm": {"headless_vs_vanilla_lm", "headless_vs_vanilla_cls", "vanilla_beats_chance"},
    "mode_connectivity": {
        "ft_seeds_connected",
        "adapter_seeds_barrier",
        "curve_removes_barrier",
        "sgd_noise_connected",
        "adapter_init_scale",
    },
}
ROW = re.compile(r"^\| `(?P<id>[A-Za-z0-9_]+)`: .*\| (?:\*\*holds\*\*|does not hold) \|$", re.M)


def claim_rows(text: str) -> dict[str, str]:
    return {m["id"]: m.group(0) for m in ROW.finditer(text)}


def papers_section(package: str) -> str:
    text = (ROOT / "PAPERS.md").read_text()
    sections = [s for s in text.split("\n## ")[1:] if s.splitlines()[0].strip().endswith(f"`{package}`")]
    assert len(sections) == 1, f"PAPERS.md needs one '## ... `{package}`' section with its claims table"
    return sections[0]


@pytest.mark.parametrize("package", sorted(REQUIRED))
def test_package_readme_and_papers_show_the_same_claims(package):
    readme = claim_rows((ROOT / "packages" / package / "README.md").read_text())
    missing = REQUIRED[package] - set(readme)
    assert not missing, f"packages/{package}/README.md has no claims row for {sorted(missing)}"
    papers = claim_rows(papers_section(package))
    assert papers == readme, (
        f"PAPERS.md and packages/{package}/README.md differ on claims "
        f"{sorted(k for k in set(papers) | set(readme) if papers.get(k) != readme.get(k))}"
    )
