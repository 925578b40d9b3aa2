"""Property 7 of the spec: exact-count selection, the 80/10/10 split, special ids, determinism, reference noise."""

import math

import torch
from headless_lm.masking import mask_tokens

V, MASK = 500, 3
SPECIAL = (0, 1, 2, 3)


def _batch(rows=200, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (rows, length), generator=g)
    ids[:, 0] = 1  # a CLS-like special id at the start of each row
    ids[:, -1] = 2
    ids[::3, -10:] = 0  # padding-like specials in a third of the rows
    return ids


def test_exact_count_specials_and_labels():
    ids = _batch()
    out = mask_tokens(
        ids,
        vocab_size=V,
        mask_token_id=MASK,
        special_token_ids=SPECIAL,
        generator=torch.Generator().manual_seed(1),
    )
    special = torch.isin(ids, torch.tensor(SPECIAL))
    n_maskable = (~special).sum(1)
    expected = torch.tensor([math.ceil(0.15 * int(n)) for n in n_maskable])
    assert torch.equal(out.mask.sum(1), expected)
    assert not (out.mask & special).any()
    assert torch.equal(out.labels[out.mask], ids[out.mask])
    assert (out.labels[~out.mask] == -100).all()
    assert torch.equal(out.input_ids[~out.mask], ids[~out.mask])  # context untouched in the bert scheme
    # random replacements never produce special ids
    changed = out.mask & (out.input_ids != ids) & (out.input_ids != MASK)
    assert not torch.isin(out.input_ids[changed], torch.tensor(SPECIAL)).any()


def test_80_10_10_split():
    ids = _batch(rows=1000, length=128, seed=2)
    out = mask_tokens(
        ids,
        vocab_size=V,
        mask_token_id=MASK,
        special_token_ids=SPECIAL,
        generator=torch.Generator().manual_seed(3),
    )
    sel = out.mask
    n = int(sel.sum())
    assert n >= 10_000
    masked = (out.input_ids[sel] == MASK).float().mean().item()
    unchanged = (out.input_ids[sel] == ids[sel]).float().mean().item()
    random = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.02
    # a random draw can equal the original id with probability ~1/V
    assert abs(unchanged - 0.1) < 0.02
    assert abs(random - 0.1) < 0.02


def test_deterministic_under_generator():
    ids = _batch(rows=20)
    a = mask_tokens(ids, vocab_size=V, mask_token_id=MASK, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(ids, vocab_size=V, mask_token_id=MASK, generator=torch.Generator().manual_seed(5))
    c = mask_tokens(ids, vocab_size=V, mask_token_id=MASK, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)


def test_reference_scheme_context_noise_and_label_bug():
    ids = torch.randint(4, V, (400, 128), generator=torch.Generator().manual_seed(7))
    out = mask_tokens(
        ids,
        vocab_size=V,
        mask_token_id=MASK,
        special_token_ids=SPECIAL,
        scheme="reference",
        generator=torch.Generator().manual_seed(8),
    )
    ctx = ~out.mask
    noise = (out.input_ids[ctx] != ids[ctx]).float().mean().item()
    assert abs(noise - 0.1 * (1 - 4 / V)) < 0.01
    sel = out.mask
    masked = (out.input_ids[sel] == MASK).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    assert torch.equal(out.labels[sel], ids[sel])  # labels are the originals unless the bug is asked for
    bug = mask_tokens(
        ids,
        vocab_size=V,
        mask_token_id=MASK,
        special_token_ids=SPECIAL,
        scheme="reference",
        reference_label_bug=True,
        generator=torch.Generator().manual_seed(8),
    )
    wrong = (bug.labels[sel] != ids[sel]).float().mean().item()
    assert 0.05 < wrong < 0.15
