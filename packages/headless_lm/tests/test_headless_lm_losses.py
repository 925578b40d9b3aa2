"""Properties 1-3 and 16 (balanced CE) of the spec: the CWT loss and the balanced cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F
from headless_lm.losses import balanced_cross_entropy, cwt_loss


def _rand(k=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g), torch.randn(k, d, generator=g)


def test_cwt_equals_diagonal_cross_entropy_and_temperature_scaling():
    pred, target = _rand()
    expected = F.cross_entropy(pred @ target.T / 0.3, torch.arange(7))
    assert torch.allclose(cwt_loss(pred, target, temperature=0.3), expected, atol=1e-6)
    assert torch.allclose(
        cwt_loss(pred, target, temperature=0.3), cwt_loss(pred / 0.3, target, temperature=1.0), atol=1e-6
    )


def test_cwt_hand_value_with_repeated_token():
    # 3 positions, targets ids (a, a, b): e(a) = [1, 0], e(b) = [0, 1]; all anchors = [1, 0]
    ea, eb = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    target = torch.stack([ea, ea, eb])
    pred = torch.tensor([[1.0, 0.0]] * 3)
    # logits row = [1, 1, 0] for every row; rows 0,1 target logit 1, row 2 target logit 0
    lse = math.log(2 * math.e + 1)
    expected = ((lse - 1) + (lse - 1) + (lse - 0)) / 3
    assert cwt_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # with duplicates kept the loss is not the unique-id one
    unique = cwt_loss(pred, target, negatives="unique", target_ids=torch.tensor([0, 0, 1]))
    lse_u = math.log(math.e + 1)
    assert unique.item() == pytest.approx(((lse_u - 1) * 2 + lse_u) / 3, rel=1e-6)


def test_duplicate_identity_and_unique_mode():
    g = torch.Generator().manual_seed(1)
    vocab = torch.randn(4, 6, generator=g)
    ids = torch.tensor([0, 1, 1, 2, 2, 2, 3, 0, 2])
    pred = torch.randn(ids.numel(), 6, generator=g)
    target = vocab[ids]
    unique_ids, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    logits_u = pred @ vocab[unique_ids].T
    identity = (
        F.cross_entropy(logits_u + counts.float().log(), inverse) + counts[inverse].float().log().mean()
    )
    assert torch.allclose(cwt_loss(pred, target), identity, atol=1e-5)
    # floor: loss >= mean log c
    assert cwt_loss(pred, target) >= counts[inverse].float().log().mean()
    assert torch.allclose(
        cwt_loss(pred, target, negatives="unique", target_ids=ids),
        F.cross_entropy(logits_u, inverse),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="target_ids"):
        cwt_loss(pred, target, negatives="unique")


def test_cwt_over_whole_vocabulary_is_tied_softmax():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(10, 4, generator=g)
    hidden = torch.randn(10, 4, generator=g)  # position s predicts token s: targets are E's rows once each
    assert torch.allclose(cwt_loss(hidden, emb), F.cross_entropy(hidden @ emb.T, torch.arange(10)), atol=1e-6)


def test_joint_permutation_invariance():
    pred, target = _rand(9, 4, seed=3)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cwt_loss(pred, target), cwt_loss(pred[perm], target[perm]), atol=1e-6)


def test_large_logits_are_finite_and_exact():
    pred = torch.tensor([[40.0, 0.0], [0.0, 40.0]])
    target = torch.tensor([[40.0, 0.0], [0.0, 40.0]])  # logits 1600 on the diagonal, 0 elsewhere
    loss = cwt_loss(pred, target)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1600.0)), abs=1e-12)
    swapped = cwt_loss(pred, target.flip(0))  # positives at 0, negatives at 1600
    assert swapped.item() == pytest.approx(1600.0, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_result_under_autocast(dtype):
    pred, target = _rand(16, 8, seed=4)
    ref = cwt_loss(pred, target)
    with torch.autocast("cpu", dtype=dtype):
        out = cwt_loss(pred.to(dtype), target.to(dtype))
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) / abs(ref.item()) < 1e-2


def test_gradient_reaches_target():
    pred, target = _rand()
    pred.requires_grad_(True)
    target.requires_grad_(True)
    cwt_loss(pred, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0
    assert pred.grad.abs().sum() > 0


def test_balanced_cross_entropy_hand_example():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    ce = F.cross_entropy(logits, labels, reduction="none")
    expected = (ce[:3].mean() + ce[3]) / 2
    assert balanced_cross_entropy(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # differs from the plain mean when classes are unbalanced
    assert abs(balanced_cross_entropy(logits, labels).item() - ce.mean().item()) > 1e-3
    # ignore index
    labels2 = torch.tensor([0, 0, -100, 1])
    expected2 = (ce[:2].mean() + ce[3]) / 2
    assert balanced_cross_entropy(logits, labels2).item() == pytest.approx(expected2.item(), rel=1e-6)
