"""MLM masking, interchange positions and the mapping parser (spec 11: 8, 9, 10)."""

import json
import math

import pytest
import torch
from diito.mapping import load_mapping, parse_variable, resolve_sites, validate_mapping
from diito.masking import mlm_mask, token_weights
from diito.positions import interchange_counts, sample_positions
from lmlab.data import sample_path
from lmlab.errors import LmlabError

SPECIALS = [0, 1, 2, 3, 4]  # pad cls sep mask unk


def _batch(B=8, T=40, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, T + 1, (B,), generator=g)
    ids = torch.randint(5, V, (B, T), generator=g)
    ar = torch.arange(T)[None]
    ids = torch.where(ar < lengths[:, None], ids, torch.zeros_like(ids))
    ids[:, 0] = 1
    ids[torch.arange(B), lengths - 1] = 2
    return ids, lengths


def test_mask_count_and_no_specials():
    ids, lengths = _batch()
    w = token_weights(torch.ones(50, dtype=torch.long) * 10, SPECIALS)
    for seed in range(5):
        out, labels, sel = mlm_mask(
            ids, lengths, w, mask_id=3, vocab_size=50, generator=torch.Generator().manual_seed(seed)
        )
        assert int(sel.sum()) == math.ceil(0.15 * int(lengths.sum()))
        assert not sel[ids < 5].any()
        assert torch.equal(labels[sel], ids[sel]) and (labels[~sel] == -100).all()
        assert torch.equal(out[~sel], ids[~sel])


def test_mask_keep_rand_proportions():
    ids, lengths = _batch(B=64, T=64, V=200)
    w = token_weights(torch.ones(200, dtype=torch.long), SPECIALS)
    counts = torch.zeros(3)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        out, _, sel = mlm_mask(ids, lengths, w, mask_id=3, vocab_size=200, generator=g)
        masked = (out == 3) & sel
        kept = (out == ids) & sel
        counts += torch.tensor([masked.sum(), kept.sum(), (sel & ~masked & ~kept).sum()], dtype=torch.float)
    frac = counts / counts.sum()
    # random replacement can hit [MASK] or the original id (1/200 each), well inside the tolerance
    assert abs(frac[0] - 0.8) < 0.02 and abs(frac[1] - 0.1) < 0.02 and abs(frac[2] - 0.1) < 0.02


def test_weights_follow_smoothed_counts():
    counts = torch.tensor([5, 5, 5, 5, 5, 1, 8, 1000, 0])
    w = token_weights(counts, SPECIALS, 0.7)
    assert (w[:5] == 0).all()
    torch.testing.assert_close(w[5:], torch.tensor([1.0, 8**-0.7, 1000**-0.7, 1.0]))
    # rare tokens are selected far more often than frequent ones
    ids = torch.tensor([[1] + [5, 7] * 20 + [2]])
    sel_rare = sel_freq = 0
    for seed in range(200):
        _, _, sel = mlm_mask(ids, torch.tensor([42]), w, 3, 9, generator=torch.Generator().manual_seed(seed))
        sel_rare += int(sel[ids == 5].sum())
        sel_freq += int(sel[ids == 7].sum())
    ratio = sel_rare / max(sel_freq, 1)
    assert ratio > 5  # weights differ by 1000 ** 0.7 = 125; without replacement that is damped, still large


def test_interchange_counts_with_cap():
    c = interchange_counts(torch.tensor([10, 20, 7]), torch.tensor([30, 5, 7]), 0.3)
    assert c.tolist() == [3, 1, 2]
    assert interchange_counts(torch.tensor([100]), torch.tensor([100]), 0.3, max_token=4).tolist() == [4]


@pytest.mark.parametrize("consecutive", [False, True])
def test_positions_inside_real_tokens_equal_counts(consecutive):
    bl = torch.tensor([20, 13, 40, 12])
    sl = torch.tensor([35, 40, 12, 12])
    T = 40
    for seed in range(20):
        P, Ps = sample_positions(
            bl, sl, T, 0.3, consecutive_only=consecutive, generator=torch.Generator().manual_seed(seed)
        )
        c = interchange_counts(bl, sl, 0.3)
        assert P.sum(1).tolist() == c.tolist() == Ps.sum(1).tolist()
        ar = torch.arange(T)[None]
        assert not (P & (ar >= bl[:, None])).any() and not (Ps & (ar >= sl[:, None])).any()
        if consecutive:
            for row in list(P) + list(Ps):
                idx = row.nonzero().flatten()
                assert len(idx) == 0 or int(idx[-1] - idx[0]) + 1 == len(idx)


def test_masked_only_positions():
    bl, sl = torch.tensor([10, 10]), torch.tensor([10, 3])
    sel = torch.zeros(2, 10, dtype=torch.bool)
    sel[0, [2, 5]] = True
    sel[1, [1, 4, 6, 8]] = True
    P, Ps = sample_positions(bl, sl, 10, masked_positions=sel, generator=torch.Generator().manual_seed(0))
    assert torch.equal(P[0], sel[0])
    assert P[1].nonzero().flatten().tolist() == [1, 4, 6]  # capped at the source length
    assert Ps.sum(1).tolist() == [2, 3] and not Ps[1, 3:].any()


def test_parse_variables_and_ranges():
    vs = parse_variable("$L:[0:4]$H:[0:12]$[0:64]")
    assert len(vs) == 48 and {v.layer for v in vs} == {0, 1, 2, 3}
    sites = resolve_sites("$L:6$H:[0:12]$[0:64]", 12, 768, 12)
    assert list(sites) == [6] and sites[6] is None
    sites = resolve_sites("$L:2$H:1$[16:32]", 4, 256, 4)
    assert sites[2].nonzero().flatten().tolist() == list(range(64 + 16, 64 + 32))  # stop = h*hd + d1


@pytest.mark.parametrize(
    "name,msg",
    [
        ("$L:12$H:[0:12]$[0:64]", "layer 12"),
        ("$L:1$H:12$[0:64]", "head chunk"),
        ("$L:1$H:0$[0:65]", "dims"),
        ("L6", "bad variable"),
    ],
)
def test_validation_errors(name, msg):
    with pytest.raises(LmlabError, match=msg):
        resolve_sites(name, 12, 768, 12)


EXPECTED = {
    "single_middle_layer_6.nm": [([6], [3])],
    "single_middle_layer_3.nm": [([6], [1])],
    "single_middle_layer_9.nm": [([6], [4])],
    "multiple_single_middle_late_layer_6.nm": [([9], [3]), ([10], [4])],
    "multiple_single_middle_late_layer_3.nm": [([9], [0]), ([10], [1])],
    "multiple_single_multilayer_layer_6.nm": [([2 * i, 2 * i + 1], [i]) for i in range(6)],
    "multiple_single_multilayer_layer_3.nm": [
        ([0, 1, 2, 3], [0]),
        ([4, 5, 6, 7], [1]),
        ([8, 9, 10, 11], [2]),
    ],
    "multiple_single_multilayer_layer_9.nm": [
        ([0, 1], [0]),
        ([2, 3], [1]),
        ([4, 5], [2]),
        ([6], [3]),
        ([7], [4]),
        ([8], [5]),
        ([9], [6]),
        ([10], [7]),
        ([11], [8]),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_mapping_files(name):
    entries = load_mapping(sample_path(f"diito-reference-configs/{name}"))
    n_student = int(name.split("_")[-1][0])
    got = []
    for e in entries:
        t = resolve_sites(e.teacher[0], 12, 768, 12)
        s = resolve_sites(e.student[0], n_student, 768, 12)
        assert all(v is None for v in t.values()) and all(v is None for v in s.values())
        got.append((list(t), list(s)))
    assert got == EXPECTED[name]
    validate_mapping(entries, (12, 768, 12), (n_student, 768, 12))
    too_few = max(k for _, s in got for k in s)  # a student one layer short of the file's deepest site
    with pytest.raises(LmlabError, match=f"the student has {too_few} layers"):
        validate_mapping(entries, (12, 768, 12), (too_few, 768, 12))


def test_mapping_file_errors(tmp_path):
    bad = tmp_path / "bad.nm"
    bad.write_text(json.dumps({"something": []}))
    with pytest.raises(LmlabError, match="interchange_variable_mappings"):
        load_mapping(bad)
    with pytest.raises(LmlabError, match="does not exist"):
        load_mapping(tmp_path / "missing.nm")
