"""The method's maths (spec §6 P1-P10, P13): init, prediction, isolation, loss, n = 1, ensembling, schedule,
clipping, sparse == dense, init_head."""

import pytest
import torch
import torch.nn.functional as F
from invariant_lm._testing import args, batches, snapshot, tiny
from invariant_lm.model import InvariantMLM
from invariant_lm.trainer import InvariantTrainer, OptimSettings, build_optimizers, environment_update

ARCHS = ["bert", "roberta", "distilbert"]


def _decoder(base):
    return base.get_output_embeddings()


@pytest.mark.parametrize("arch", ARCHS)
def test_init_copies_head_and_unties(arch):
    base, _ = tiny(arch)
    model = InvariantMLM.from_base(base, ["a", "b", "c"])
    dec = _decoder(base)
    ptrs = {p.data_ptr() for p in model.body.parameters()}
    seen = set()
    for head in model.heads.values():
        assert torch.equal(head.weight, dec.weight) and torch.equal(head.bias, dec.bias)
        own = {p.data_ptr() for p in head.parameters()}
        assert not own & ptrs and not own & seen  # private: no storage shared with the body or another head
        seen |= own
    for (k, v), (k2, v2) in zip(
        model.body.state_dict().items(), base.base_model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize("arch", [*ARCHS, "modernbert"])
def test_prediction_is_mean_of_head_logits_and_equals_base_at_init(arch):
    if arch == "modernbert":
        from lmlab.testing import tiny_tokenizer
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        tok = tiny_tokenizer("wordpiece")
        cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)  # fmt: skip
        torch.manual_seed(0)
        base = ModernBertForMaskedLM(cfg).eval()
    else:
        base, tok = tiny(arch)
        base.eval()
    model = InvariantMLM.from_base(base, ["a", "b", "c"]).eval()
    x = torch.randint(5, len(tok), (2, 12))
    with torch.no_grad():
        ref = base(input_ids=x).logits
        out = model(input_ids=x, return_head_logits=True)
        assert torch.allclose(out.logits, ref, atol=1e-5)
        for head in model.heads.values():  # make the heads differ
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        out = model(input_ids=x, return_head_logits=True)
    assert out.head_logits.shape == (3, 2, 12, len(tok))
    assert torch.allclose(out.logits, out.head_logits.mean(0), atol=1e-6)
    assert not torch.allclose(out.logits, ref, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_irm_update_moves_only_body_and_head_e(arch):
    base, tok = tiny(arch)
    model = InvariantMLM.from_base(base, ["a", "b", "c"])
    tr = InvariantTrainer(model, args(weight_decay=0.1), tokenizer=tok, total_updates=6)
    before = {e: snapshot(h) for e, h in model.heads.items()}
    body_before = snapshot(model.body)
    tr.update("b", batches(tok, 1)[0])
    for e, h in model.heads.items():
        same = all(torch.equal(v, before[e][k]) for k, v in h.state_dict().items())
        assert same == (e != "b"), e
        if e != "b":
            assert all(p.grad is None for p in h.parameters())
            assert len(tr.head_opts[e].state) == 0
            assert tr.head_scheds[e].last_epoch == 0
    assert not torch.equal(model.body.state_dict()["embeddings.word_embeddings.weight"],
                           body_before["embeddings.word_embeddings.weight"])  # fmt: skip
    assert tr.head_scheds["b"].last_epoch == 1 and tr.body_sched.last_epoch == 1
    steps = {int(s["step"]) for s in tr.head_opts["b"].state.values()}
    assert steps == {1}


def test_loss_is_ensemble_cross_entropy_not_head_e():
    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["a", "b"])
    b = batches(tok, 1)[0]
    with torch.no_grad():
        for p in model.heads["a"].parameters():
            p.add_(torch.randn_like(p) * 0.2)
    tr = InvariantTrainer(model, args(learning_rate=0.0), tokenizer=tok, total_updates=4)
    loss = tr.update("a", b)
    with torch.no_grad():
        out = model(**b, sparse=False, return_head_logits=True)
        v = out.logits.shape[-1]
        manual = F.cross_entropy(
            out.head_logits.mean(0).reshape(-1, v), b["labels"].reshape(-1), ignore_index=-100
        )
        own = F.cross_entropy(out.head_logits[0].reshape(-1, v), b["labels"].reshape(-1), ignore_index=-100)
    assert abs(loss - manual.item()) < 1e-5
    assert abs(loss - own.item()) > 1e-3


def test_body_gradient_flows_through_inactive_heads():
    base, tok = tiny("roberta")
    model = InvariantMLM.from_base(base, ["a", "b"])
    b = batches(tok, 1)[0]

    def body_grad():
        model.set_trainable_heads(["a"])
        model.zero_grad(set_to_none=True)
        model(**b).loss.backward()
        return model.body.embeddings.word_embeddings.weight.grad.clone()

    g1 = body_grad()
    with torch.no_grad():
        model.heads["b"].transform.dense.weight.add_(
            0.3 * torch.randn_like(model.heads["b"].transform.dense.weight)
        )
    g2 = body_grad()
    assert (g1 - g2).abs().max() > 1e-2 * g1.abs().max()
    assert model.heads["b"].transform.dense.weight.grad is None


def _untie(base):
    dec = base.get_output_embeddings()
    dec.weight = torch.nn.Parameter(dec.weight.detach().clone())
    return base


@pytest.mark.parametrize("decoder", ["private", "shared"])
@pytest.mark.parametrize("arch", ARCHS)
def test_n1_equals_plain_mlm_training(arch, decoder):
    base, tok = tiny(arch)
    ref = tiny(arch)[0]
    if decoder == "private":
        _untie(ref)
    else:
        assert ref.get_output_embeddings().weight is ref.get_input_embeddings().weight
    model = InvariantMLM.from_base(base, ["only"], head_decoder=decoder)
    k = 5
    a = args(learning_rate=2e-3, max_grad_norm=0.5)
    tr = InvariantTrainer(model, a, tokenizer=tok, total_updates=k)
    opt = torch.optim.AdamW(ref.parameters(), lr=a.learning_rate, weight_decay=0.0)
    from transformers import get_scheduler

    sched = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=k)
    for b in batches(tok, k):
        tr.update("only", b)
        opt.zero_grad(set_to_none=True)
        ref(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), a.max_grad_norm)
        opt.step()
        sched.step()
    ref_body = ref.base_model.state_dict()
    for name, v in model.body.state_dict().items():
        assert torch.allclose(v, ref_body[name], atol=1e-6), name
    head = model.heads["only"]
    dec = ref.get_output_embeddings()
    w = head.weight if decoder == "private" else model.body.get_input_embeddings().weight
    assert torch.allclose(w, dec.weight, atol=1e-6)
    assert torch.allclose(head.bias, dec.bias, atol=1e-6)
    assert not torch.equal(w, base.get_output_embeddings().weight) or decoder == "shared"


def test_ensemble_mode_keeps_heads_identical_irm_does_not():
    results = {}
    for mode in ("ensemble", "irm"):
        base, tok = tiny("bert")
        model = InvariantMLM.from_base(base, ["a", "b", "c"])
        tr = InvariantTrainer(model, args(), tokenizer=tok, mode=mode, total_updates=6)
        bs = batches(tok, 6)
        for i, b in enumerate(bs):
            tr.update("abc"[i % 3], b)
        heads = [snapshot(h) for h in model.heads.values()]
        results[mode] = all(torch.equal(heads[0][k], h[k]) for h in heads[1:] for k in h)
        if mode == "ensemble":
            assert all(int(s["step"]) == 6 for o in tr.head_opts.values() for s in o.state.values())
    assert results["ensemble"] is True
    assert results["irm"] is False


def test_schedule_counts_updates_and_head_lrs():
    from datasets import Dataset
    from invariant_lm._testing import tokenised
    from invariant_lm.data import total_updates

    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["a", "b", "c"])
    u = total_updates(3, nb_steps=7)
    assert u == 9
    envs = {e: tokenised(tok, 12, 24, offset=i * 12) for i, e in enumerate("abc")}
    tr = InvariantTrainer(model, args(learning_rate=0.09), tokenizer=tok, total_updates=u)
    tr.train(envs, batch_size=2)
    assert [r["env"] for r in tr.log] == list("abcabcabc")
    assert all(int(s["step"]) == 9 for s in tr.body_opt.state.values())
    for o in tr.head_opts.values():
        assert all(int(s["step"]) == 3 for s in o.state.values())
    assert [round(r["lr_body"], 6) for r in tr.log] == [round(0.09 * (1 - i / 9), 6) for i in range(9)]
    assert tr.body_sched.get_last_lr()[0] == 0.0
    assert tr.head_scheds["a"].get_last_lr()[0] == pytest.approx(0.09 * (1 - 3 / 9))  # reference: horizon U
    own = build_optimizers(model, OptimSettings(learning_rate=0.09), 9, "irm", "own")[3]["a"]
    for _ in range(3):
        own.step()
    assert own.get_last_lr()[0] == 0.0  # own: horizon U / n
    assert Dataset  # imported for the tokeniser


def test_clipping_ignores_stale_gradient_on_inactive_head():
    def run(plant):
        base, tok = tiny("bert")
        model = InvariantMLM.from_base(base, ["a", "b"])
        opts = build_optimizers(model, OptimSettings(learning_rate=1e-2, max_grad_norm=1.0), 4)
        if plant:
            for p in model.heads["b"].parameters():
                p.grad = torch.full_like(p, 1e6)
        environment_update(model, "a", [batches(tok, 1)[0]], *opts, max_grad_norm=1.0)
        return model

    m1, m2 = run(False), run(True)
    for (k, v), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v, v2), k


@pytest.mark.parametrize("decoder", ["private", "shared"])
def test_sparse_equals_dense(decoder):
    base, tok = tiny("roberta")
    model = InvariantMLM.from_base(base, ["a", "b", "c"], head_decoder=decoder)
    with torch.no_grad():
        for h in model.heads.values():
            for p in h.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    b = batches(tok, 1)[0]
    grads = []
    losses = []
    for sparse in (True, False):
        model.set_trainable_heads(["b"])
        model.zero_grad(set_to_none=True)
        loss = model(**b, sparse=sparse).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert grads[0].keys() == grads[1].keys()
    assert not any(n.startswith("heads.a.") for n in grads[0])
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def test_init_head_random_distinct_and_registered():
    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["a", "b"], init_head=True)
    dec = base.get_output_embeddings().weight
    wa, wb = model.heads["a"].weight, model.heads["b"].weight
    assert not torch.equal(wa, dec) and not torch.equal(wa, wb)
    assert wa.std().item() == pytest.approx(0.02, rel=0.1)
    sd = model.state_dict()
    assert "heads.a.weight" in sd and torch.equal(sd["heads.a.weight"], wa)
    tr = InvariantTrainer(model, args(), tokenizer=tok, total_updates=2)
    before = wa.detach().clone()
    tr.update("a", batches(tok, 1)[0])
    assert not torch.equal(model.heads["a"].weight, before)
