"""lmlab.claims: the `holds` rule on hand examples, claims.json, the table."""

import json

import pytest
from lmlab.claims import (
    Claim,
    claims_section,
    claims_table,
    holds,
    main,
    mean_std,
    read_claims,
    seeds_cell,
    write_claims,
)
from lmlab.errors import LmlabError


def test_holds_rule_by_hand():
    # method 1, 2, 3 (mean 2, sample std 1); control 3, 4, 5 (mean 4, std 1): margin 1/sqrt(3) = 0.577
    assert holds("lower", [1, 2, 3], [3, 4, 5]) is True  # gain 2 > 0.577
    assert holds("higher", [1, 2, 3], [3, 4, 5]) is False
    # control 2.4, 2.5, 2.6 (mean 2.5): gain 0.5 < 0.577 -> does not hold, though the mean is lower
    assert holds("lower", [1, 2, 3], [2.4, 2.5, 2.6]) is False
    # gain 0.6 > 0.577 -> holds
    assert holds("lower", [1, 2, 3], [2.5, 2.6, 2.7]) is True
    # one seed: std 0, any strict gain holds; a tie does not
    assert holds("higher", [2.0], [1.0]) is True and holds("higher", [1.0], [1.0]) is False
    # within: |1.04 / 1.0 - 1| = 0.04 <= 0.05; 1.06 is not
    assert holds("within", [1.04, 1.04], [1.0, 1.0], 0.05) is True
    assert holds("within", [1.06], [1.0], 0.05) is False
    assert holds("lower", [float("nan")], [1.0]) is False
    with pytest.raises(LmlabError, match="better must be one of"):
        holds("smaller", [1], [2])
    with pytest.raises(LmlabError, match="needs a tolerance"):
        holds("within", [1], [2])


def test_claims_json_and_table(tmp_path):
    claims = [
        Claim("a_vs_b", "A beats B", "nll", "lower", "A", "B", [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]),
        Claim("ppl", "A keeps B's perplexity", "ppl", "within", "A", "B", [10.0], [12.0], tolerance=0.05),
    ]
    data = json.loads(write_claims("paper", claims, tmp_path).read_text())
    assert data["paper"] == "paper"
    assert [(c["id"], c["holds"], c["method_values"]) for c in data["claims"]] == [
        ("a_vs_b", True, [1.0, 2.0, 3.0]),
        ("ppl", False, [10.0]),
    ]
    table = claims_table(claims)
    assert (
        "| `a_vs_b`: A beats B | nll | lower | A: 2 ± 1 (1, 2, 3) | B: 4 ± 1 (3, 4, 5) | **holds** |" in table
    )
    assert "within 5%" in table and "does not hold" in table
    with pytest.raises(LmlabError, match="unique"):
        write_claims("paper", [claims[0], claims[0]], tmp_path)


def test_read_back_and_sanity_section(tmp_path):
    claims = [
        Claim("a_vs_b", "A beats B", "nll", "lower", "A", "B", [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]),
        Claim("oracle", "the oracle beats B", "nll", "lower", "oracle", "B", [3.0], [3.0]),
    ]
    path = write_claims("paper", claims, tmp_path)
    data = json.loads(path.read_text())
    data["claims"][0]["holds"] = False  # a stale or edited flag is recomputed on reading
    path.write_text(json.dumps(data))
    paper, back = read_claims(path)
    assert paper == "paper" and back == claims and back[0].holds is True
    section = claims_section(claims, sanity=["oracle"])
    assert section.startswith("## Claims\n") and "Sanity arm `oracle` failed" in section
    assert "failed" not in claims_section(claims[:1])
    with pytest.raises(LmlabError, match="not among the claims"):
        claims_section(claims, sanity=["nope"])


def test_main_prints_each_papers_table(tmp_path, capsys):
    claims = [Claim("a_vs_b", "A beats B", "nll", "lower", "A", "B", [1.0, 2.0, 3.0], [3.0, 4.0, 5.0])]
    path = write_claims("paper", claims, tmp_path)
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == f"### paper\n\n{claims_table(claims)}\n\n"
    assert main([]) == 2


def test_mean_std_and_seeds_cell():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([5.0]) == (5.0, 0.0)
    assert seeds_cell([1.0, 2.0, 3.0]) == "2 ± 1 (1, 2, 3)"
    assert seeds_cell([0.1234, 0.5678], ".3f", ".3f") == "0.346 ± 0.314 (0.123, 0.568)"
