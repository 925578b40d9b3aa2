"""`headless-lm reproduce`: the --quick run through the console entry point (claims.json against the run folders'
own files), `headless-lm demo` (the same quick run), and the experiment's arithmetic (document split, labels,
majority rate, equal-compute steps)."""

import json
from pathlib import Path

import pytest
import torch
from headless_lm.cli import main
from headless_lm.reproduce import (
    IMAGINATIVE,
    QUICK,
    genre_label,
    headless_steps,
    load_brown,
    majority_rate,
    split_documents,
)
from lmlab.claims import read_claims
from lmlab.errors import LmlabError

REQUIRED = {"headless_vs_vanilla_lm", "headless_vs_vanilla_cls", "vanilla_beats_chance"}
SCHEMA = {"id", "statement", "metric", "better", "tolerance", "method", "control"}
SCHEMA |= {"method_values", "control_values", "holds"}


def _accuracy(model_dir: Path, rows: list[torch.Tensor]) -> float:
    """Next-token accuracy recomputed one row at a time (independent of the reproduction's batched scorer)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, weights_only=True).eval()
    hits = total = 0
    with torch.no_grad():
        for row in rows:
            pred = model(input_ids=row[None]).logits[0, :-1].argmax(-1)
            hits += int((pred == row[1:]).sum())
            total += len(row) - 1
    return hits / total


def test_reproduce_quick_claims_match_the_run_files(tmp_path):
    from headless_lm.data import PackedRows, load_packed

    out = tmp_path / "repro"
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    assert data["paper"] == "headless_lm"
    assert {c["id"] for c in data["claims"]} == REQUIRED
    for claim in data["claims"]:
        assert set(claim) == SCHEMA
        assert claim["better"] == "higher" and claim["tolerance"] is None
    claims = {c["id"]: c for c in data["claims"]}
    assert [c.holds for c in read_claims(out / "claims.json")[1]] == [c["holds"] for c in data["claims"]]

    seed = 0  # --quick runs seed 0 only
    folder = out / f"seed{seed}"
    # decoders: the claim's values are the exported models' accuracies on the held-out rows
    packed = PackedRows(load_packed(str(out / "heldout.hf"))[0], "packed")
    rows = [packed[i] for i in range(min(16, len(packed)))]
    lm = claims["headless_vs_vanilla_lm"]
    assert lm["method_values"] == pytest.approx(
        [_accuracy(folder / "gpt_headless_ft" / "model", rows)], abs=1e-9
    )
    assert lm["control_values"] == pytest.approx(
        [_accuracy(folder / "gpt_vanilla" / "model", rows)], abs=1e-9
    )
    # the headless arm got the equal-compute step count and started from the headless run's checkpoint
    assert json.loads((folder / "gpt_vanilla" / "results.json").read_text())["global_step"] == 12
    assert json.loads((folder / "gpt_headless" / "results.json").read_text())["global_step"] == 17
    assert json.loads((folder / "gpt_headless_ft" / "results.json").read_text())["global_step"] == 4
    # encoders: the best dev score of each glue run's history.json
    best = {
        arm: max(
            json.loads((folder / f"cls_{arm}" / "sst2" / f"seed{seed}" / "history.json").read_text())[
                "history"
            ]
        )
        for arm in ("vanilla", "headless")
    }
    assert claims["headless_vs_vanilla_cls"]["method_values"] == [best["headless"]]
    assert claims["headless_vs_vanilla_cls"]["control_values"] == [best["vanilla"]]
    assert claims["vanilla_beats_chance"]["method_values"] == [best["vanilla"]]
    dev = [json.loads(line)["label"] for line in (out / "cls_data" / "SST-2" / "validation.jsonl").open()]
    assert len(dev) >= 100 and set(dev) == {0, 1}
    assert claims["vanilla_beats_chance"]["control_values"] == [max(dev.count(0), dev.count(1)) / len(dev)]
    # the per-seed results file holds the same numbers
    seed_results = json.loads((folder / "results.json").read_text())
    assert seed_results["cls"]["headless"]["dev_accuracy"] == best["headless"]
    assert seed_results["lm"]["vanilla"]["next_token_acc"] == lm["control_values"][0]

    report = (out / "report.md").read_text().splitlines()
    assert report[0].startswith("# ") and report[1:3] == ["", "## Claims"]
    assert report[4].startswith("| claim |")
    assert all(f"`{cid}`" in "\n".join(report[4:10]) for cid in REQUIRED)

    # a rerun finds every seed finished and rewrites the same claims without training again
    mtime = (folder / "gpt_vanilla" / "results.json").stat().st_mtime
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    assert json.loads((out / "claims.json").read_text()) == data
    assert (folder / "gpt_vanilla" / "results.json").stat().st_mtime == mtime
    # other options into the same folder would mix runs: refused before anything is written
    assert main(["reproduce", "--quick", "true", "--cost_ratio", "3", "--output_dir", str(out)]) == 1
    assert json.loads((out / "claims.json").read_text()) == data


def test_demo_is_the_quick_reproduction(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    assert data["paper"] == "headless_lm" and {c["id"] for c in data["claims"]} == REQUIRED
    report = (out / "report.md").read_text()
    assert report.startswith("# ") and "## Claims" in report and all(f"`{c}`" in report for c in REQUIRED)
    options = json.loads((out / "options.json").read_text())
    assert {k: options[k] for k in QUICK} == QUICK and options["threads"] == 1
    seed = json.loads((out / "seed0" / "results.json").read_text())
    claims = {c["id"]: c for c in data["claims"]}
    assert claims["headless_vs_vanilla_lm"]["control_values"] == [seed["lm"]["vanilla"]["next_token_acc"]]
    assert json.loads((out / "seed0" / "gpt_vanilla" / "results.json").read_text())["global_step"] == 12
    # `reproduce --quick` into the demo's folder takes it as its own finished run (other options are refused)
    mtime = (out / "seed0" / "results.json").stat().st_mtime
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    assert json.loads((out / "claims.json").read_text()) == data
    assert (out / "seed0" / "results.json").stat().st_mtime == mtime


def test_split_keeps_documents_whole_and_every_genre_on_both_sides():
    rows = load_brown()
    train, held = split_documents(rows, 5)
    assert len(train) + len(held) == len(rows) == 15667
    train_docs, held_docs = {r["doc"] for r in train}, {r["doc"] for r in held}
    assert not train_docs & held_docs
    per_genre = {g: {r["doc"] for r in rows if r["genre"] == g} for g in {r["genre"] for r in rows}}
    assert (
        len(held_docs) == sum(-(-len(d) // 5) for d in per_genre.values()) == 105
    )  # 1st, 6th, ... of each genre
    assert len(train_docs) == 500 - 105
    assert {r["genre"] for r in train} == {r["genre"] for r in held} and len({r["genre"] for r in held}) == 15
    assert len(held) >= 1000  # the classifier's dev rows
    assert split_documents(rows, 5) == (train, held)  # no randomness
    small = load_brown(docs_per_genre=3)
    assert len({r["doc"] for r in small}) == 45
    with pytest.raises(LmlabError, match="holdout_every"):
        split_documents(rows, 1)


def test_labels_and_majority_rate():
    assert len(IMAGINATIVE) == 6
    assert [genre_label(g) for g in ("romance", "humor", "news", "learned", "science_fiction")] == [
        1,
        1,
        0,
        0,
        1,
    ]
    assert majority_rate([1, 0, 0, 0]) == 0.75 and majority_rate([1, 1, 0]) == pytest.approx(2 / 3)
    with pytest.raises(LmlabError):
        majority_rate([])


def test_headless_steps_cost_what_the_vanilla_steps_cost():
    # (600 - 100) vanilla-step budget at 2.08 headless steps each, plus 100 fine-tuning steps at vanilla cost
    assert headless_steps(600, 100, 2.08) == 1040
    assert headless_steps(12, 4, 2.08) == 17
    for lm, ft, ratio in ((600, 100, 2.08), (300, 50, 1.37), (1000, 1, 0.8)):
        n = headless_steps(lm, ft, ratio)
        assert abs(n / ratio + ft - lm) <= 0.5 / ratio
    with pytest.raises(LmlabError, match="ft_steps"):
        headless_steps(10, 10, 2.0)
