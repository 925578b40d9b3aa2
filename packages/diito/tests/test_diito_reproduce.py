"""`diito reproduce --quick` end to end (issue 11), the Brown split and the held-out intervention metrics."""

import json
import math
import statistics

import pytest
import torch
from diito.cli import main
from diito.evaluation import distillation_metrics
from diito.mapping import MappingEntry
from diito.reproduce import ARMS, QUICK, SANITY, Recipe, brown_split
from diito.sites import interchange_forward_separate, plain_forward
from lmlab.testing import tiny_model

REQUIRED = {"diito_vs_standard", "diito_vs_equal_weight", "teacher_iia"}
KEYS = {
    "id",
    "statement",
    "metric",
    "better",
    "tolerance",
    "method",
    "control",
    "method_values",
    "control_values",
    "holds",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diito_reproduce") / "results"
    assert main(["reproduce", "--quick", "--output_dir", str(out)]) == 0
    return out


def _from_run_folders(out, arm, metric):
    return [
        json.loads((out / "runs" / f"{arm}-seed{s}" / "heldout.json").read_text())[metric]
        for s in QUICK.seeds
    ]


def test_quick_reproduction_claims_come_from_the_run_folders(quick_run):
    data = json.loads((quick_run / "claims.json").read_text())
    assert data["paper"] == "diito"
    claims = {c["id"]: c for c in data["claims"]}
    assert set(claims) >= REQUIRED
    assert {"diito_vs_standard_kl", "diito_vs_equal_weight_kl"} <= set(claims)
    for c in data["claims"]:
        assert set(c) == KEYS, c["id"]
        assert c["better"] in ("lower", "higher", "within")
        method_arm = SANITY if c["id"] == "teacher_iia" else c["method"]
        assert c["method_values"] == _from_run_folders(quick_run, method_arm, c["metric"]), c["id"]
        if c["id"] == "teacher_iia":
            assert c["control_values"] == _from_run_folders(quick_run, SANITY, "ignore_iia")
        else:
            assert c["control"] in ARMS
            assert c["control_values"] == _from_run_folders(quick_run, c["control"], c["metric"]), c["id"]
        assert len(c["method_values"]) == len(c["control_values"]) == len(QUICK.seeds)
    # the rule by hand on the causal-KL claims (one seed: std 0, so holds iff strictly lower)
    for cid in ("diito_vs_standard_kl", "diito_vs_equal_weight_kl"):
        c = claims[cid]
        assert c["holds"] == (statistics.fmean(c["method_values"]) < statistics.fmean(c["control_values"]))
    assert claims["teacher_iia"]["method_values"] == [1.0]  # the teacher against itself: deterministic
    # every arm's student was trained, each from its own run folder
    for arm in ARMS:
        assert (quick_run / "runs" / f"{arm}-seed0" / "DONE").exists()
    report = (quick_run / "report.md").read_text().splitlines()
    assert report[0].startswith("# DIITO") and report[2] == "## Claims"
    assert report[4].startswith("| claim |")
    assert sum(line.startswith("| `") for line in report[6 : 6 + len(claims)]) == len(claims)


def test_quick_reproduction_resumes_without_redoing_runs(quick_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in (quick_run / "runs").glob("*/heldout.json")}
    claims = (quick_run / "claims.json").read_text()
    assert main(["reproduce", "--quick", "--output_dir", str(quick_run)]) == 0
    assert "[diito train]" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert (quick_run / "claims.json").read_text() == claims


def test_brown_split_holds_out_whole_documents():
    train, held = brown_split(Recipe())
    train_docs, held_docs = {r["doc"] for r in train}, {r["doc"] for r in held}
    assert not train_docs & held_docs
    docs = sorted(train_docs | held_docs)
    assert len(docs) == 500 and sorted(held_docs) == docs[::10]
    assert len(train) + len(held) == 15667
    assert 0.05 < len(held) / len(train) < 0.15
    strided, _ = brown_split(Recipe(paragraph_stride=20))
    assert 0 < len(strided) < len(train) / 15


def _batch(V, B=3, T=10):
    g = torch.Generator().manual_seed(0)
    ids, src = torch.randint(5, V, (B, T), generator=g), torch.randint(5, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0
    P = torch.zeros(B, T, dtype=torch.bool)
    P[:, 2:5] = True
    labels = torch.full((B, T), -100)
    labels[:, 3] = ids[:, 3]
    return {
        "base_ids": ids,
        "base_mask": mask,
        "src_ids": src,
        "src_mask": torch.ones(B, T, dtype=torch.long),
        "P": P,
        "Ps": P.clone(),
        "labels": labels,
        "entry": torch.tensor([0, 0, 0]),
    }


def test_intervention_metrics_match_a_hand_computation():
    teacher, _ = tiny_model("bert", "mlm", layers=3, hidden=32, heads=2, seed=1)
    student, _ = tiny_model("distilbert", "mlm", layers=2, hidden=32, heads=2, seed=2)
    teacher.eval(), student.eval()
    batch = _batch(teacher.config.vocab_size)
    name = "$L:{}$H:[0:2]$[0:16]"
    args = (batch["base_ids"], batch["base_mask"], batch["src_ids"], batch["src_mask"])
    with torch.no_grad():
        t = interchange_forward_separate(teacher, *args, {1: None}, batch["P"], batch["Ps"])
        s = interchange_forward_separate(student, *args, {0: None}, batch["P"], batch["Ps"])
        t_plain, _ = plain_forward(teacher, batch["base_ids"], batch["base_mask"])
    m = batch["base_mask"].bool()
    t_int, s_int, t_arg = t.int_logits.argmax(-1), s.int_logits.argmax(-1), t_plain.argmax(-1)
    changed = m & (t_arg != t_int)
    assert 0 < int(changed.sum()) < int(m.sum())  # the probe needs both kinds of position

    got = distillation_metrics(
        teacher, student, [batch], [MappingEntry((name.format(1),), (name.format(0),))]
    )
    assert got["eval_tokens"] == int(m.sum())
    assert got["iia"] == pytest.approx(float((s_int == t_int)[m].float().mean()))
    assert got["ignore_iia"] == pytest.approx(float((t_arg == t_int)[m].float().mean()))
    assert got["changed_fraction"] == pytest.approx(1 - got["ignore_iia"])
    assert got["changed_iia"] == pytest.approx(float((s_int == t_int)[changed].float().mean()))
    from diito.losses import kl_loss

    assert got["causal_kl"] == pytest.approx(float(kl_loss(s.int_logits, t.int_logits, m, 2.0)), rel=1e-4)
    assert got["plain_kl"] == pytest.approx(float(kl_loss(s.logits, t_plain, m, 2.0)), rel=1e-4)
    assert got["plain_kl"] != pytest.approx(got["causal_kl"], rel=1e-3)
    labels = batch["labels"]
    nll = torch.nn.functional.cross_entropy(s.logits[labels >= 0], labels[labels >= 0])
    assert got["mlm_perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-4)

    own = distillation_metrics(
        teacher, teacher, [batch], [MappingEntry((name.format(1),), (name.format(1),))]
    )
    assert own["iia"] == own["changed_iia"] == 1.0
    assert own["causal_kl"] == pytest.approx(0.0, abs=1e-6) and own["plain_kl"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert own["ignore_iia"] == got["ignore_iia"]


def test_unigram_perplexity_by_hand():
    from diito.data.binarized import from_sequences
    from diito.reproduce import unigram_perplexity

    sp = {"pad": 0, "cls": 1, "sep": 2}
    train = from_sequences([[1, 3, 3, 4, 2], [1, 3, 2]], 5, sp)  # counts 3: 3, 4: 1 (+0.5 each)
    held = from_sequences([[1, 3, 4, 2]], 5, sp)
    p3, p4 = 3.5 / 5.0, 1.5 / 5.0
    assert unigram_perplexity(train, held) == pytest.approx(math.exp(-(math.log(p3) + math.log(p4)) / 2))
