"""lmlab.masking: the 80/10/10 corruption and the Bernoulli choice of positions."""

import pytest
import torch
from lmlab.masking import IGNORE_INDEX, bernoulli_positions, corrupt

MASK = 3


def test_bernoulli_positions_rate_and_maskable_only():
    maskable = torch.ones(200, 100, dtype=torch.bool)
    maskable[:, :10] = False
    chosen = bernoulli_positions(maskable, 0.15, torch.Generator().manual_seed(0))
    assert not chosen[:, :10].any()
    assert abs(chosen[:, 10:].float().mean().item() - 0.15) < 0.01  # 18,000 draws: std 0.0027
    again = bernoulli_positions(maskable, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(chosen, again)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        bernoulli_positions(maskable, 1.5)


def test_corrupt_80_10_10_labels_and_untouched_positions():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 50, (300, 100), generator=g)
    selected = torch.rand(ids.shape, generator=g) < 0.5
    allowed = torch.arange(10, 50)
    out, labels = corrupt(ids, selected, mask_token_id=MASK, random_ids=allowed, generator=g)
    assert torch.equal(labels[selected], ids[selected]) and (labels[~selected] == IGNORE_INDEX).all()
    assert torch.equal(out[~selected], ids[~selected])  # only chosen positions change
    n = selected.sum().item()
    masked = (out == MASK) & selected
    random_or_kept = selected & ~masked
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    # random tokens come from `allowed`; a random draw equals the original 1 time in 40, so "changed" ~ 0.1 * 39/40
    changed = random_or_kept & (out != ids)
    assert abs(changed.sum().item() / n - 0.1 * 39 / 40) < 0.01
    assert ((out[random_or_kept] >= 10) & (out[random_or_kept] < 50)).all()


def test_corrupt_vocab_size_is_uniform_over_every_id_and_probabilities_checked():
    ids = torch.zeros(1, 4000, dtype=torch.long)
    selected = torch.ones_like(ids, dtype=torch.bool)
    out, _ = corrupt(
        ids, selected, mask_token_id=MASK, random_ids=7, mask_token_prob=0.0, random_token_prob=1.0
    )
    assert set(out.unique().tolist()) == set(range(7))
    with pytest.raises(ValueError, match="at most 1"):
        corrupt(ids, selected, mask_token_id=MASK, random_ids=7, mask_token_prob=0.8, random_token_prob=0.3)
