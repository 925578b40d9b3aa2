"""issue 11: `reproduce --quick` through the console entry writes claims.json whose values are the ones in the run
folders' files, a report that opens with the claims table, and resumes; the maths it adds: the permuted twin is the
same function with other weights, the synthetic task needs counting (no single cue word gives the label), and the
seed pairs."""

import json
import random
import statistics

import pytest
import torch
from lmlab.claims import holds
from lmlab.errors import LmlabError
from mode_connectivity.cli import main
from mode_connectivity.make_tiny import CUES, LABELS, make_nli, rule_label
from mode_connectivity.permute import permute_t5
from mode_connectivity.reproduce import seed_pairs

REQUIRED = {
    "ft_seeds_connected", "adapter_seeds_barrier", "curve_removes_barrier", "sgd_noise_connected",
    "adapter_init_scale", "permuted_twin_barrier",
}  # fmt: skip
SCHEMA = {"id", "statement", "metric", "better", "tolerance", "method", "control", "method_values",
          "control_values", "holds"}  # fmt: skip
# claim -> (method arm, measure), (control arm, measure): read here straight from each path's results.json
SOURCES = {
    "ft_seeds_connected": (("ft_seeds", "perf_barrier"), ("ft_twin", "perf_barrier")),
    "adapter_seeds_barrier": (("adapter_seeds", "perf_barrier"), ("ft_seeds", "perf_barrier")),
    "curve_removes_barrier": (("adapter_seeds_curve", "perf_barrier"), ("adapter_seeds", "perf_barrier")),
    "sgd_noise_connected": (("adapter_sgd_noise", "perf_barrier"), ("adapter_seeds", "perf_barrier")),
    "adapter_init_scale": (("adapter08_seeds", "perf_barrier"), ("adapter_seeds", "perf_barrier")),
    "adapter_init_scale_curve": (
        ("adapter08_seeds_curve", "perf_barrier"),
        ("adapter08_seeds", "perf_barrier"),
    ),
    "ft_data_halves_connected": (("ft_halves", "perf_barrier"), ("ft_twin", "perf_barrier")),
    "adapter_data_halves": (("adapter_halves", "perf_barrier"), ("adapter_seeds", "perf_barrier")),
    "glue_task_boundary": (("glue_between_tasks", "perf_barrier"), ("glue_within_task", "perf_barrier")),
    "permuted_twin_barrier": (("ft_twin", "min"), ("ft_twin", "ends")),
}


def _from_files(out, arm, measure):
    vals = []
    for f in sorted((out / "paths" / arm).glob("*/results.json")):
        r = json.loads(f.read_text())
        s = r["dev"] if "dev" in r else r["validation_matched"]  # glue-interpolate on mnli
        vals.append(
            {
                "perf_barrier": s["perf_barrier"],
                "min": min(s["metric"]),
                "ends": (s["metric"][0] + s["metric"][-1]) / 2,
            }[measure]
        )
    return vals


@pytest.mark.slow
def test_reproduce_quick_claims_are_the_run_files_values(tmp_path):
    out = tmp_path / "mc"
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    assert data["paper"] == "mode_connectivity"
    ids = [c["id"] for c in data["claims"]]
    assert set(ids) >= REQUIRED and set(ids) == set(SOURCES)
    for c in data["claims"]:
        assert set(c) == SCHEMA and c["better"] in ("lower", "higher")
        (m_arm, m_measure), (c_arm, c_measure) = SOURCES[c["id"]]
        assert c["method_values"] == _from_files(out, m_arm, m_measure) and len(c["method_values"]) == 1
        assert c["control_values"] == _from_files(out, c_arm, c_measure) and len(c["control_values"]) == 1
        assert c["holds"] == holds(c["better"], c["method_values"], c["control_values"])
    # every training run is its own folder with its results; the curve arms ran the `curve` command
    for arm in ("ft", "ft_split1", "adapter", "adapter08", "adapter_sgd_noise", "glue_mnli", "glue_sst2"):
        assert all((run / "results.json").is_file() for run in (out / "runs" / arm).glob("seed_*"))
    assert (out / "paths" / "adapter_seeds_curve" / "seeds_0_1" / "checkpoint-best").is_dir()
    report = (out / "report.md").read_text().splitlines()
    assert report[0].startswith("# ") and report[2] == "## Claims" and report[4].startswith("| claim |")
    assert sum(line.startswith("| `") for line in report[4 : 6 + len(ids)]) == len(ids)
    # a rerun resumes: nothing is trained again and the claims are the same
    done = out / "runs" / "adapter" / "seed_0" / "DONE"
    stamp = done.stat().st_mtime_ns
    assert main(["reproduce", "--quick", "true", "--output_dir", str(out)]) == 0
    assert done.stat().st_mtime_ns == stamp and json.loads((out / "claims.json").read_text()) == data


@pytest.mark.parametrize("ffn", ["relu", "gated-gelu"])
def test_permuted_twin_is_the_same_function_with_other_weights(ffn):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj=ffn,
                   tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    twin = permute_t5(state, cfg.num_heads, torch.Generator().manual_seed(1))
    assert set(twin) == set(state)
    g = torch.Generator().manual_seed(2)
    batch = {
        "input_ids": torch.randint(3, 97, (3, 11), generator=g),
        "labels": torch.randint(3, 97, (3, 5), generator=g),
    }
    with torch.no_grad():
        before = model(**batch).logits
        model.load_state_dict(twin)
        after = model(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    still = [k for k in state if torch.equal(state[k], twin[k])]
    # every tensor is relabelled (d_model runs through all of them); only constant ones (fresh norms) look the same
    assert all(state[k].unique().numel() == 1 for k in still) and len(still) < len(state) / 3
    # the straight line leaves the function: the midpoint differs from both ends
    with torch.no_grad():
        model.load_state_dict({k: (state[k] + twin[k]) / 2 for k in state})
        middle = model(**batch).logits
    assert (middle - before).abs().max() > 0.1


def test_task_needs_counting_no_single_cue_word_gives_the_label():
    rows = make_nli(900, seed=5)
    assert [lab for _, lab in rows].count("neutral") == 300
    cls = {w: lab for lab in LABELS for w in CUES[lab]}
    first_cue, any_cue = 0, []
    for text, label in rows:
        words = text.split(" [SEP] ")[0].split()[2:]
        assert rule_label(words) == label  # the rule: the majority class of the three cue words
        cues = [w for w in words if w in cls]
        assert len(cues) == 3 and sorted(cls[w] == label for w in cues) == [False, True, True]
        first_cue += cls[cues[0]] == label
        any_cue.append(cls[random.Random(len(any_cue)).choice(cues)] == label)
    # reading one cue word is right 2/3 of the time, never always: the model has to count
    assert 0.6 < first_cue / len(rows) < 0.73 and 0.6 < statistics.fmean(any_cue) < 0.73
    with pytest.raises(ValueError, match="three|3 cue"):
        rule_label(["surely", "indeed", "certainly"])


def test_seed_pairs_cyclic():
    assert seed_pairs([0, 1, 2]) == [(0, 1), (1, 2), (2, 0)]
    assert seed_pairs([4, 7]) == [(4, 7)]
    with pytest.raises(LmlabError, match="two seeds"):
        seed_pairs([3])
