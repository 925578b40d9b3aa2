"""Spec §11 P1–P10: the weighting model, the weighted loss, the meta-gradient (identity, finite differences,
adjoint == unroll), padding invariance, the reset schedule and the locality KL. Tiny GPT-2s in float64."""

import math

import pytest
import torch
from camels.losses import kl_locality, token_nll, weighted_lm_loss
from camels.meta import (
    MetaConfig,
    MetaTrainer,
    base_params,
    inner_update,
    meta_grad_wrt_weights,
    meta_step,
    outer_loss,
)
from camels.weighting import CaMeLSWeightModel
from lmlab.errors import LmlabError
from lmlab.testing import tiny_config, tiny_model, tiny_tokenizer

torch.set_default_dtype(torch.float32)
INIT = math.log(2) / 3


def base(seed=0, dropout=0.0):
    model, tok = tiny_model(
        "gpt2",
        "clm",
        seed=seed,
        hidden=16,
        layers=1,
        heads=2,
        attn_implementation="eager",
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return model.double(), tok


def weighter(seed=1, dropout=0.0):
    cfg = tiny_config("gpt2", tiny_tokenizer("gpt2"), hidden=16, layers=1, heads=2)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = dropout
    torch.manual_seed(seed)
    wm = CaMeLSWeightModel(cfg, hidden=8).double()
    torch.nn.init.normal_(wm.head[2].weight, std=0.5)  # away from the zero init so gradients are generic
    return wm


def make_batch(vocab, lengths=(7, 5, 6), qa_len=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    qa = torch.randint(3, vocab, (len(lengths), qa_len), generator=g)
    labels = qa.clone()
    labels[:, : qa_len // 2] = -100
    return {
        "doc_ids": ids,
        "doc_mask": mask,
        "qa_ids": qa,
        "qa_mask": torch.ones_like(qa),
        "qa_labels": labels,
    }


def loc_batch(vocab, n=6, seed=5):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, vocab, (1, n), generator=g),
        "attention_mask": torch.ones(1, n, dtype=torch.long),
    }


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------------ P1, P2


def test_p1_initial_weights_and_shapes():
    cfg = tiny_config("gpt2", tiny_tokenizer("gpt2"), hidden=16, layers=1, heads=2)
    wm = CaMeLSWeightModel(cfg, hidden=8).eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = wm(ids, mask)
    assert w.shape == (2, 4)
    expected = mask.float() * 0.2310490602
    assert torch.allclose(w, expected, atol=1e-7)
    assert wm(ids[:1, :1], mask[:1, :1]).shape == (1, 1)
    assert abs(INIT - 0.2310490602) < 1e-9


def test_p2_weights_are_causal_and_left_padding_invariant():
    wm = weighter().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    mask = torch.ones_like(ids)
    w0 = wm(ids, mask)
    changed = ids.clone()
    changed[0, 3] = 11
    w1 = wm(changed, mask)
    assert torch.equal(w0[0, :3], w1[0, :3])
    assert not torch.allclose(w0[0, 3:], w1[0, 3:])
    left = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10]])
    lmask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    wl = wm(left, lmask)
    assert torch.allclose(wl[0, 2:], w0[0], atol=1e-10)
    assert torch.all(wl[0, :2] == 0)


# ------------------------------------------------------------------------------------------------------ P3


def test_p3_weighted_loss_scales():
    model, _ = base()
    batch = make_batch(model.config.vocab_size)
    ids, mask = batch["doc_ids"], batch["doc_mask"]
    logits = model(input_ids=ids, attention_mask=mask).logits
    labels = ids.masked_fill(mask == 0, -100)
    hf = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    B, L = ids.shape
    n_real = int(mask[:, 1:].sum())
    ones = mask.double()
    loss = weighted_lm_loss(logits, ids, mask, ones)
    assert torch.allclose(
        loss.float(), hf * n_real / (B * (L - 1)), rtol=1e-6
    )  # HF computes its loss in float32
    assert torch.allclose(weighted_lm_loss(logits, ids, mask, 2 * ones), 2 * loss, rtol=1e-12)
    zero = weighted_lm_loss(logits, ids, mask, 0 * ones)
    assert float(zero) == 0.0
    # padded targets contribute nothing even with a huge weight there
    big = ones + (1 - mask.double()) * 1e6
    assert torch.allclose(weighted_lm_loss(logits, ids, mask, big), loss, rtol=1e-12)
    nll = token_nll(logits, ids, mask)
    assert nll.shape == (B, L - 1) and torch.all(nll[mask[:, 1:] == 0] == 0)


def test_p3_doubling_weights_doubles_sgd_step():
    model, _ = base()
    batch = make_batch(model.config.vocab_size)
    cfg = MetaConfig(inner_lr=0.1, sequential_update=False, inner_dropout=False, max_text_len=16)
    p0 = base_params(model)
    w = batch["doc_mask"].double()
    d1 = {n: p0[n] - q for n, q in inner_update(model, p0, batch, w, cfg, create_graph=False).items()}
    d2 = {n: p0[n] - q for n, q in inner_update(model, p0, batch, 2 * w, cfg, create_graph=False).items()}
    for n in d1:
        assert torch.allclose(d2[n], 2 * d1[n], rtol=1e-9, atol=1e-15)
    plain = {"input_ids": batch["doc_ids"], "attention_mask": batch["doc_mask"]}  # the other accepted layout
    d0 = inner_update(model, p0, plain, 0 * w, cfg, create_graph=False)
    assert all(torch.equal(d0[n], p0[n]) for n in p0)


# ------------------------------------------------------------------------------------------------------ P4


def test_p4_one_step_meta_gradient_identity():
    model, _ = base()
    batch = make_batch(model.config.vocab_size, lengths=(6, 4))
    B, L = batch["doc_ids"].shape
    alpha = 0.3
    cfg = MetaConfig(inner_lr=alpha, sequential_update=False, inner_dropout=False, max_text_len=L, c_kl=0.0)
    torch.manual_seed(0)
    w = torch.rand(B, L, dtype=torch.float64) * batch["doc_mask"]
    grad = meta_grad_wrt_weights(model, base_params(model), batch, w, cfg)
    theta1 = inner_update(model, base_params(model), batch, w, cfg, create_graph=False)
    qa, _ = outer_loss(model, theta1, batch, None, None, cfg)
    g_out = torch.autograd.grad(qa, list(theta1.values()))
    p0 = base_params(model)
    model.eval()
    from camels.meta import model_logits

    nll = token_nll(
        model_logits(model, p0, batch["doc_ids"], batch["doc_mask"]), batch["doc_ids"], batch["doc_mask"]
    )
    expected = torch.zeros(B, L, dtype=torch.float64)
    for b in range(B):
        for t in range(1, L):
            if batch["doc_mask"][b, t] == 0:
                continue
            g = torch.autograd.grad(
                nll[b, t - 1], list(p0.values()), retain_graph=True, allow_unused=True, materialize_grads=True
            )
            expected[b, t] = -alpha / (B * (L - 1)) * sum((gi * go).sum() for gi, go in zip(g, g_out))
    assert rel(grad, expected) < 1e-10
    assert torch.all(grad[:, 0] == 0)
    assert torch.all(grad[batch["doc_mask"] == 0] == 0)


# -------------------------------------------------------------------------------------------------- P5, P9


def _total(wm, model, batch, loc, cfg):
    with torch.no_grad():
        w = wm(batch["doc_ids"], batch["doc_mask"])
    from camels.meta import _pre_loc_logits

    p0 = base_params(model)
    pre = _pre_loc_logits(model, p0, loc, cfg)
    new = inner_update(model, p0, batch, w, cfg, create_graph=False)
    with torch.no_grad():
        return float(outer_loss(model, new, batch, loc, pre, cfg)[0])


@pytest.mark.parametrize("mode", ["unroll", "adjoint"])
def test_p5_finite_differences_sequential_three_docs(mode):
    model, _ = base()
    wm = weighter().eval()
    vocab = model.config.vocab_size
    batch, loc = make_batch(vocab), loc_batch(vocab)
    cfg = MetaConfig(
        inner_lr=2.0, sequential_update=True, inner_dropout=False, max_text_len=8, meta_grad_mode=mode
    )
    wm.zero_grad()
    meta_step(wm, model, base_params(model), batch, loc, cfg)
    probes = [
        (wm.head[2].weight, (0, 1)),
        (wm.head[2].bias, (0,)),
        (wm.head[0].weight, (2, 3)),
        (wm.encoder.h[0].mlp.c_fc.weight, (1, 2)),
    ]
    eps = 1e-6
    for param, idx in probes:
        analytic = float(param.grad[idx])
        orig = float(param[idx])
        with torch.no_grad():
            param[idx] = orig + eps
        up = _total(wm, model, batch, loc, cfg)
        with torch.no_grad():
            param[idx] = orig - eps
        down = _total(wm, model, batch, loc, cfg)
        with torch.no_grad():
            param[idx] = orig
        numeric = (up - down) / (2 * eps)
        assert abs(analytic - numeric) <= 1e-5 * max(abs(numeric), 1e-8), (param.shape, analytic, numeric)


@pytest.mark.parametrize(
    "sequential,steps,dropout,keep",
    [(True, 1, 0.0, 1), (False, 2, 0.0, 0), (True, 2, 0.2, 1), (True, 1, 0.2, 3)],
)
def test_p9_adjoint_equals_unroll(sequential, steps, dropout, keep):
    model, _ = base(dropout=dropout)
    vocab = model.config.vocab_size
    batch, loc = make_batch(vocab, lengths=(7, 5, 6, 3)), loc_batch(vocab)
    grads, losses, params = {}, {}, {}
    for mode in ("unroll", "adjoint"):
        wm = weighter()
        wm.eval()
        cfg = MetaConfig(
            inner_lr=1.0,
            sequential_update=sequential,
            num_inner_steps=steps,
            inner_dropout=dropout > 0,
            max_text_len=8,
            meta_grad_mode=mode,
            c_norm=0.1,
            adjoint_keep_last=keep,
        )
        torch.manual_seed(123)
        total, _, new = meta_step(wm, model, base_params(model), batch, loc, cfg)
        grads[mode] = torch.cat([p.grad.flatten() for p in wm.parameters()])
        losses[mode], params[mode] = total, new
    assert grads["unroll"].abs().max() > 0
    assert rel(grads["adjoint"], grads["unroll"]) < 1e-9
    assert abs(float(losses["adjoint"] - losses["unroll"])) < 1e-12
    for n in params["unroll"]:
        assert torch.allclose(params["adjoint"][n], params["unroll"][n], rtol=0, atol=1e-12)


def test_p9_adjoint_equals_unroll_with_weighting_model_dropout():
    """The adjoint mode re-runs the weighting model's forward for its backward (activation checkpointing): with
    dropout in both models it replays the same masks, so the gradients are unroll's."""
    model, _ = base(dropout=0.2)
    vocab = model.config.vocab_size
    batch, loc = make_batch(vocab, lengths=(7, 5, 6)), loc_batch(vocab)
    grads = {}
    for mode in ("unroll", "adjoint"):
        wm = weighter(dropout=0.3).train()
        cfg = MetaConfig(inner_lr=1.0, max_text_len=8, meta_grad_mode=mode, c_norm=0.1)
        torch.manual_seed(7)
        meta_step(wm, model, base_params(model), batch, loc, cfg)
        grads[mode] = torch.cat([p.grad.flatten() for p in wm.parameters()])
        grads[mode + "_rng"] = torch.rand(1)  # both modes leave the generator at the same point
    assert grads["unroll"].abs().max() > 0
    assert rel(grads["adjoint"], grads["unroll"]) < 1e-9
    assert torch.equal(grads["adjoint_rng"], grads["unroll_rng"])


# -------------------------------------------------------------------------------------------------- P6, P7


def test_p6_padding_invariance():
    model, _ = base()
    wm = weighter().eval()
    vocab = model.config.vocab_size
    batch, loc = make_batch(vocab), loc_batch(vocab)
    out = {}
    for pad in (False, True):
        wm.zero_grad()
        cfg = MetaConfig(inner_lr=1.0, inner_dropout=False, max_text_len=32, pad_to_max=pad)
        total, _, _ = meta_step(wm, model, base_params(model), batch, loc, cfg)
        out[pad] = (total, torch.cat([p.grad.flatten() for p in wm.parameters()]))
    assert abs(float(out[True][0] - out[False][0])) <= 1e-6 * abs(float(out[False][0]))
    assert rel(out[True][1], out[False][1]) < 1e-6


def test_p7_base_grad_untouched_and_zero_lr_gives_zero_gradient():
    model, _ = base()
    wm = weighter().eval()
    vocab = model.config.vocab_size
    batch, loc = make_batch(vocab), loc_batch(vocab)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for mode in ("unroll", "adjoint"):
        wm.zero_grad()
        p0 = base_params(model)
        meta_step(
            wm,
            model,
            p0,
            batch,
            loc,
            MetaConfig(inner_lr=1.0, inner_dropout=False, max_text_len=8, meta_grad_mode=mode),
        )
        assert all(p.grad is None for p in model.parameters())
        assert all(p.grad is None for p in p0.values())
        assert any(float(p.grad.abs().max()) > 0 for p in wm.parameters())
        wm.zero_grad(set_to_none=False)
        meta_step(
            wm,
            model,
            base_params(model),
            batch,
            loc,
            MetaConfig(inner_lr=0.0, inner_dropout=False, max_text_len=8, meta_grad_mode=mode),
        )
        assert all(float(p.grad.abs().max()) == 0 for p in wm.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


# ------------------------------------------------------------------------------------------------------ P8


def test_p8_reset_schedule():
    model, _ = base()
    wm = weighter().eval()
    vocab = model.config.vocab_size
    cfg = MetaConfig(inner_lr=1.0, inner_dropout=False, max_text_len=8, grad_acc_steps=100)
    trainer = MetaTrainer(wm, model, None, cfg, update_batch_size=2, reset_base_freq=4)
    theta0 = {n: p.detach().clone() for n, p in trainer.params.items()}
    b1 = make_batch(vocab, lengths=(5, 4), seed=1)
    trainer.train_batch(b1, None)
    with torch.no_grad():
        w = wm(b1["doc_ids"], b1["doc_mask"])
    expected = inner_update(model, base_params(model), b1, w, cfg, create_graph=False)
    assert all(torch.allclose(trainer.params[n], expected[n], atol=1e-12) for n in expected)
    assert any(not torch.equal(trainer.params[n], theta0[n]) for n in theta0)
    trainer.train_batch(make_batch(vocab, lengths=(5, 4), seed=2), None)
    assert all(torch.equal(trainer.params[n], theta0[n]) for n in theta0)
    with pytest.raises(LmlabError, match="multiple"):
        MetaTrainer(wm, model, None, cfg, update_batch_size=4, reset_base_freq=6)


# ----------------------------------------------------------------------------------------------------- P10


def test_p10_kl_locality():
    pre = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    post = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])

    def kl(a, b):
        p = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        q = [math.exp(x) / sum(math.exp(y) for y in b) for x in b]
        return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))

    expected = (kl(pre[0, 0].tolist(), post[0, 0].tolist()) + kl(pre[0, 1].tolist(), post[0, 1].tolist())) / 2
    assert abs(float(kl_locality(pre, post, mask)) - expected) < 1e-6
    assert float(kl_locality(pre, pre, torch.ones(1, 3))) == pytest.approx(0.0, abs=1e-7)
