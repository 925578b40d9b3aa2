"""Claims of a reproduction: each compares a method's per-seed values of one metric with a control's, under one
rule, and says whether the paper's claim holds here.

For `better="lower"` or `"higher"` a claim holds when the method's mean beats the control's mean by more than
max(std_method, std_control) / sqrt(seeds) (sample standard deviations; seeds = the fewer of the two arms' seeds).
For `better="within"` it holds when |mean_method / mean_control - 1| <= tolerance. The values are written as
measured, every seed of both arms, in `claims.json`; `claims_table` renders them for reports and READMEs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

RULES = ("lower", "higher", "within")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for a single value) of per-seed values."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seeds_cell(values: Sequence[float], fmt: str = ".4g", std_fmt: str = ".2g") -> str:
    """Per-seed values as a report cell: "mean ± std (each seed)", the mean and seeds in `fmt`, the std in
    `std_fmt`."""
    mean, std = mean_std(values)
    return f"{mean:{fmt}} ± {std:{std_fmt}} ({', '.join(f'{v:{fmt}}' for v in values)})"


def holds(
    better: str,
    method_values: Sequence[float],
    control_values: Sequence[float],
    tolerance: float | None = None,
) -> bool:
    """Whether a claim holds under the rule of this module's docstring."""
    if better not in RULES:
        raise LmlabError(f"better must be one of {', '.join(RULES)}, got {better!r}")
    if not method_values or not control_values:
        raise LmlabError("a claim needs at least one value per arm")
    if not all(math.isfinite(v) for v in (*method_values, *control_values)):
        return False
    m_mean, m_std = mean_std(method_values)
    c_mean, c_std = mean_std(control_values)
    if better == "within":
        if tolerance is None or c_mean == 0:
            raise LmlabError("a 'within' claim needs a tolerance and a non-zero control mean")
        return abs(m_mean / c_mean - 1) <= tolerance
    margin = max(m_std, c_std) / math.sqrt(min(len(method_values), len(control_values)))
    gain = c_mean - m_mean if better == "lower" else m_mean - c_mean
    return gain > margin


@dataclasses.dataclass
class Claim:
    id: str
    statement: str
    metric: str
    better: str
    method: str
    control: str
    method_values: list[float]
    control_values: list[float]
    tolerance: float | None = None

    @property
    def holds(self) -> bool:
        return holds(self.better, self.method_values, self.control_values, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "holds": self.holds}


def write_claims(paper: str, claims: Sequence[Claim], out_dir: str | os.PathLike) -> Path:
    """Write `<out_dir>/claims.json`: {"paper", "claims": [... every claim with its per-seed values and holds]}."""
    from lmlab.io import write_json

    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise LmlabError(f"claim ids must be unique, got {ids}")
    return write_json(
        Path(out_dir) / "claims.json", {"paper": paper, "claims": [c.to_dict() for c in claims]}
    )


def read_claims(path: str | os.PathLike) -> tuple[str, list[Claim]]:
    """Read a `claims.json` back: (paper, claims). `holds` is recomputed from the values, never trusted."""
    import json

    data = json.loads(Path(path).read_text())
    fields = {f.name for f in dataclasses.fields(Claim)}
    return data["paper"], [Claim(**{k: v for k, v in c.items() if k in fields}) for c in data["claims"]]


def claims_table(claims: Sequence[Claim]) -> str:
    """A markdown table: claim, metric, rule, method and control as mean ± std (every seed), holds or not."""
    lines = [
        "| claim | metric | better | method: mean ± std (seeds) | control: mean ± std (seeds) | holds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in claims:
        rule = f"within {c.tolerance:.0%}" if c.better == "within" else c.better
        lines.append(
            f"| `{c.id}`: {c.statement} | {c.metric} | {rule} | {c.method}: {seeds_cell(c.method_values)} "
            f"| {c.control}: {seeds_cell(c.control_values)} | {'**holds**' if c.holds else 'does not hold'} |"
        )
    return "\n".join(lines)


def claims_section(claims: Sequence[Claim], sanity: Sequence[str] = ()) -> str:
    """The "Claims" section that opens a reproduction's report: the table, then one line per sanity claim (ids in
    `sanity`) that does not hold, saying that the set-up could not show the effect, so the other rows say little."""
    lines = ["## Claims", "", claims_table(claims)]
    by_id = {c.id: c for c in claims}
    missing = [s for s in sanity if s not in by_id]
    if missing:
        raise LmlabError(f"sanity claims {missing} are not among the claims {list(by_id)}")
    failed = [s for s in sanity if not by_id[s].holds]
    for s in failed:
        lines += [
            "",
            f"**Sanity arm `{s}` failed**: this set-up could not show the effect it probes, so the claims that "
            "depend on it say little here.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lmlab.claims results/*/claims.json`: each paper's claims table, as PAPERS.md and the package
    READMEs show it (holds recomputed from the per-seed values)."""
    import sys

    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m lmlab.claims results/<paper>/claims.json ...", file=sys.stderr)
        return 2
    for path in paths:
        paper, claims = read_claims(path)
        print(f"### {paper}\n\n{claims_table(claims)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
