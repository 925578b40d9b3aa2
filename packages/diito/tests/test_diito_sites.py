"""Interchange intervention properties (spec section 11, items 1-5) on stock tiny HF models."""

import pytest
import torch
from diito.mapping import resolve_sites
from diito.positions import sample_positions
from diito.sites import (
    capture_sites,
    find_blocks,
    interchange_forward,
    interchange_forward_separate,
    intervene,
    plain_forward,
    swap_positions,
)
from lmlab.testing import tiny_model

ARCHS = [("bert", "mlm"), ("distilbert", "mlm"), ("roberta", "mlm"), ("gpt2", "clm")]


def _model(arch, head):
    model, _ = tiny_model(arch, head, layers=4, hidden=64, heads=4, seed=1)
    return model.eval()


def _batch(model, B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model.config.vocab_size
    ids = torch.randint(5, V, (B, T), generator=g)
    src = torch.randint(5, V, (B, T), generator=g)
    lb = torch.tensor([T, T - 4, T - 2][:B])
    ls = torch.tensor([T - 3, T, T - 6][:B])
    ar = torch.arange(T)[None]
    return ids, (ar < lb[:, None]).long(), src, (ar < ls[:, None]).long(), lb, ls


@pytest.mark.parametrize("arch,head", ARCHS)
@pytest.mark.parametrize("fused", [True, False])
def test_source_equal_base_changes_nothing(arch, head, fused):
    model = _model(arch, head)
    ids, mb, _, _, lb, _ = _batch(model)
    P, _ = sample_positions(lb, lb, ids.shape[1], prop=0.5, generator=torch.Generator().manual_seed(3))
    fn = interchange_forward if fused else interchange_forward_separate
    with torch.no_grad():
        plain, _ = plain_forward(model, ids, mb)
        for sites in ({1: None}, {0: None, 3: None}):
            out = fn(model, ids, mb, ids, mb, sites, P, P)
            assert P.any()
            torch.testing.assert_close(out.int_logits, plain, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,head", ARCHS)
def test_zero_positions_is_identity(arch, head):
    model = _model(arch, head)
    ids, mb, src, ms, lb, ls = _batch(model)
    P, Ps = sample_positions(lb, ls, ids.shape[1], prop=0.0)
    assert not P.any() and not Ps.any()
    with torch.no_grad():
        plain, _ = plain_forward(model, ids, mb)
        out = interchange_forward(model, ids, mb, src, ms, {2: None}, P, Ps)
    torch.testing.assert_close(out.int_logits, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,head", ARCHS)
@pytest.mark.parametrize("site", [0, 2, 3])
def test_full_swap_reproduces_source_run(arch, head, site):
    model = _model(arch, head)
    ids, _, src, _, _, _ = _batch(model)
    ones = torch.ones_like(ids)
    P = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        src_plain, src_hidden = plain_forward(model, src, ones)
        out = interchange_forward(model, ids, ones, src, ones, {site: None}, P, P)
        sep = interchange_forward_separate(model, ids, ones, src, ones, {site: None}, P, P)
    torch.testing.assert_close(out.int_logits, src_plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.int_hidden, src_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(sep.int_logits, src_plain, atol=1e-5, rtol=0)


def test_reference_convention_breaks_full_swap():
    """The reference read the source at the block's input and wrote at its output: property (c) fails there."""
    model = _model("bert", "mlm")
    ids, _, src, _, _, _ = _batch(model)
    ones = torch.ones_like(ids)
    P = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        src_plain, _ = plain_forward(model, src, ones)
        out = interchange_forward(model, ids, ones, src, ones, {2: None}, P, P, convention="reference")
        sep = interchange_forward_separate(
            model, ids, ones, src, ones, {2: None}, P, P, convention="reference"
        )
    assert (out.int_logits - src_plain).abs().max() > 1e-3
    torch.testing.assert_close(out.int_logits, sep.int_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,head", ARCHS)
@pytest.mark.parametrize("convention", ["consistent", "reference"])
def test_fused_equals_separate_passes(arch, head, convention):
    model = _model(arch, head)
    ids, mb, src, ms, lb, ls = _batch(model)
    P, Ps = sample_positions(lb, ls, ids.shape[1], prop=0.5, generator=torch.Generator().manual_seed(1))
    for sites in ({1: None}, {0: None, 2: None}, {1: None, 2: None, 3: None}):
        with torch.no_grad():
            a = interchange_forward(model, ids, mb, src, ms, sites, P, Ps, convention=convention)
            b = interchange_forward_separate(model, ids, mb, src, ms, sites, P, Ps, convention=convention)
        assert (a.int_logits - a.logits).abs().max() > 1e-3  # the intervention does something
        torch.testing.assert_close(a.int_logits, b.int_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.int_hidden, b.int_hidden, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)


def test_written_values_and_untouched_dims():
    model = _model("bert", "mlm")
    ids, mb, src, ms, lb, ls = _batch(model)
    n_layers, hidden, heads = 4, 64, 4
    sites = resolve_sites("$L:1$H:[1:3]$[8:16]", n_layers, hidden, heads)
    dims = sites[1]
    assert (
        dims.sum() == 16
        and dims[16 + 8 : 16 + 16].all()
        and dims[32 + 8 : 32 + 16].all()
        and not dims[:24].any()
    )
    P, Ps = sample_positions(lb, ls, ids.shape[1], prop=0.5, generator=torch.Generator().manual_seed(2))
    block = find_blocks(model)[1]
    with torch.no_grad():
        with capture_sites(model, [1]) as src_store:
            plain_forward(model, src, ms)
        with capture_sites(model, [1]) as base_store:
            plain_forward(model, ids, mb)
        seen = {}
        after = block.register_forward_hook(lambda m, a, o: seen.__setitem__("h", o))
        try:
            with intervene(model, sites, dict(src_store), P, Ps) as calls:
                plain_forward(model, ids, mb)
        finally:
            after.remove()
    assert calls == [1]
    out, A, base = seen["h"], src_store[1], base_store[1]
    expected = base.clone()
    for i in range(ids.shape[0]):
        p = P[i].nonzero().flatten()
        q = Ps[i].nonzero().flatten()
        assert len(p) == len(q) > 0
        for pj, qj in zip(p, q):
            expected[i, pj, dims] = A[i, qj, dims]
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert torch.equal(out[..., ~dims], base[..., ~dims])


def test_multi_site_entry_writes_every_layer():
    model = _model("bert", "mlm")
    ids, mb, src, ms, lb, ls = _batch(model)
    P, Ps = sample_positions(lb, ls, ids.shape[1], prop=0.3)
    sites = resolve_sites("$L:[0:4]$H:[0:4]$[0:16]", 4, 64, 4)
    assert list(sites) == [0, 1, 2, 3] and all(v is None for v in sites.values())
    calls = []
    with torch.no_grad():
        interchange_forward(model, ids, mb, src, ms, sites, P, Ps, counter=calls)
    assert calls == [0, 1, 2, 3]
    calls = []
    blocks = find_blocks(model)
    hooked = []
    originals = [b.register_forward_hook for b in blocks]
    for i, b in enumerate(blocks):
        b.register_forward_hook = lambda *a, i=i, f=originals[i], **k: (hooked.append(i), f(*a, **k))[1]
    try:
        with torch.no_grad():
            interchange_forward(model, ids, mb, src, ms, {2: None}, P, Ps, counter=calls)
    finally:
        for b in blocks:
            del b.register_forward_hook
    assert calls == [2]
    assert hooked == [2, 3]  # the writer on site 2, the last-hidden reader on the last block; nothing else


def test_hooks_are_removed_even_on_error():
    model = _model("distilbert", "mlm")
    ids, mb, src, ms, lb, ls = _batch(model)
    P, Ps = sample_positions(lb, ls, ids.shape[1], prop=0.3)
    blocks = find_blocks(model)
    bad_P = torch.ones(ids.shape[0], ids.shape[1] + 3, dtype=torch.bool)  # fails inside the writer hook
    with pytest.raises(RuntimeError):
        interchange_forward(model, ids, mb, src, ms, {1: None}, bad_P, Ps)
    with pytest.raises(RuntimeError), intervene(model, {0: None}, {0: torch.zeros(1, 2, 3)}, P, Ps):
        plain_forward(model, ids, mb)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in blocks)


def test_swap_positions_gradients_reach_source():
    base = torch.randn(2, 5, 4, requires_grad=True)
    src = torch.randn(2, 5, 4, requires_grad=True)
    P = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    Ps = torch.tensor([[1, 0, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    out = swap_positions(base, src, P, Ps)
    torch.testing.assert_close(out[0, 1], src[0, 0])
    torch.testing.assert_close(out[0, 2], src[0, 4])
    torch.testing.assert_close(out[1, 0], src[1, 3])
    torch.testing.assert_close(out[0, 0], base[0, 0])
    out.sum().backward()
    assert src.grad[0, 0].eq(1).all() and src.grad[0, 1].eq(0).all()
    assert base.grad[0, 1].eq(0).all() and base.grad[0, 0].eq(1).all()
