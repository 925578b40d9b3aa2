"""Loss terms vs hand-written formulas, zero-weight terms cost nothing, gradient flow (spec 11: 6, 7, 13)."""

import math

import pytest
import torch
from diito import losses
from diito.distill import LossWeights, distill_losses
from diito.positions import sample_positions
from lmlab.testing import tiny_model, tiny_tokenizer


def test_kl_loss_matches_hand_formula_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 7, generator=g)
    t = torch.randn(2, 4, 7, generator=g)
    select = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    T = 2.0
    total, n = 0.0, 0
    for i in range(2):
        for j in range(4):
            if select[i, j]:
                p = torch.softmax(t[i, j] / T, -1)
                q = torch.softmax(s[i, j] / T, -1)
                total += float((p * (p.log() - q.log())).sum())
                n += 1
    expected = T**2 * total / n
    assert losses.kl_loss(s, t, select, T).item() == pytest.approx(expected, rel=1e-5)
    s2 = s.clone()
    s2[0, 3] += 100.0  # a padding position
    assert losses.kl_loss(s2, t, select, T).item() == pytest.approx(expected, rel=1e-5)
    ref = (
        torch.nn.KLDivLoss(reduction="batchmean")(
            torch.log_softmax(s[select] / T, -1), torch.softmax(t[select] / T, -1)
        )
        * T**2
    )
    assert losses.kl_loss(s, t, select, T).item() == pytest.approx(ref.item(), rel=1e-5)


def test_cosine_mlm_clm_mse_match_hand_formulas():
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    select = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    vals = [
        1 - float(torch.dot(hs[i, j], ht[i, j]) / (hs[i, j].norm() * ht[i, j].norm()))
        for i in range(2)
        for j in range(3)
        if select[i, j]
    ]
    assert losses.cosine_loss(hs, ht, select).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)

    logits = torch.randn(2, 3, 6, generator=g)
    labels = torch.tensor([[2, -100, 5], [-100, -100, 1]])
    nll = [
        -float(torch.log_softmax(logits[i, j], -1)[labels[i, j]])
        for i in range(2)
        for j in range(3)
        if labels[i, j] >= 0
    ]
    assert losses.mlm_loss(logits, labels).item() == pytest.approx(sum(nll) / 3, rel=1e-5)

    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    nll = [
        -float(torch.log_softmax(logits[0, 0], -1)[2]),
        -float(torch.log_softmax(logits[0, 1], -1)[3]),
        -float(torch.log_softmax(logits[1, 0], -1)[5]),
    ]
    assert losses.clm_loss(logits, ids, mask).item() == pytest.approx(sum(nll) / 3, rel=1e-5)

    t = torch.randn(2, 3, 6, generator=g)
    expected = float(((logits - t) ** 2).sum(-1)[select].sum()) / int(select.sum())
    assert losses.mse_loss(logits, t, select).item() == pytest.approx(expected, rel=1e-5)


def _setup(tie=True):
    tok = tiny_tokenizer("wordpiece")
    teacher, _ = tiny_model("bert", "mlm", tokenizer=tok, layers=4, hidden=64, heads=4, seed=0)
    student, _ = tiny_model(
        "distilbert", "mlm", tokenizer=tok, layers=2, hidden=64, heads=4, seed=1, tie_word_embeddings=tie
    )
    teacher.eval()
    student.eval()
    g = torch.Generator().manual_seed(0)
    B, T = 3, 10
    V = len(tok)
    base = torch.randint(5, V // 2, (B, T), generator=g)
    src = torch.randint(V // 2, V, (B, T), generator=g)  # source tokens never occur in the base
    base_len = torch.tensor([10, 8, 6])
    src_len = torch.tensor([9, 10, 7])
    ar = torch.arange(T)[None]
    P, Ps = sample_positions(base_len, src_len, T, prop=0.5, generator=g)
    labels = torch.where(torch.rand(B, T, generator=g) < 0.3, base, torch.full_like(base, -100))
    labels = labels.masked_fill(ar >= base_len[:, None], -100)
    batch = {
        "base_ids": base,
        "base_mask": (ar < base_len[:, None]).long(),
        "src_ids": src,
        "src_mask": (ar < src_len[:, None]).long(),
        "labels": labels,
        "selected": labels >= 0,
        "P": P,
        "Ps": Ps,
    }
    return teacher, student, batch


def _count_calls(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("causal", [0.0, 0.5])
def test_each_model_runs_once_per_step(causal):
    teacher, student, batch = _setup()
    tc, th = _count_calls(teacher)
    sc, sh = _count_calls(student)
    w = LossWeights(alpha_ce=0.5, alpha_mlm=0.5, alpha_clm=0.0, alpha_causal_ce=causal)
    out = distill_losses(teacher, student, batch, w, teacher_sites={2: None}, student_sites={0: None})
    th.remove()
    sh.remove()
    assert len(tc) == 1 and len(sc) == 1
    assert ("loss_causal_ce" in out) == (causal > 0)


def test_zero_causal_weight_equals_standard_distillation_and_same_gradients():
    teacher, student, batch = _setup()
    w = LossWeights(
        alpha_ce=0.5, alpha_mlm=0.3, alpha_cos=0.2, alpha_clm=0.0, alpha_causal_ce=0.0, alpha_causal_cos=0.0
    )
    out = distill_losses(teacher, student, batch, w, teacher_sites={2: None}, student_sites={0: None})
    out["loss"].backward()
    grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    student.zero_grad()
    # by hand: plain passes
    with torch.no_grad():
        t_out = teacher(
            input_ids=batch["base_ids"], attention_mask=batch["base_mask"], output_hidden_states=True
        )
    s_out = student(input_ids=batch["base_ids"], attention_mask=batch["base_mask"], output_hidden_states=True)
    m = batch["base_mask"].bool()
    manual = (
        0.5 * losses.kl_loss(s_out.logits, t_out.logits, m, 2.0)
        + 0.3
        * torch.nn.functional.cross_entropy(
            s_out.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100
        )
        + 0.2 * losses.cosine_loss(s_out.hidden_states[-1], t_out.hidden_states[-1], m)
    )
    assert out["loss"].item() == pytest.approx(manual.item(), rel=1e-5)
    manual.backward()
    grads2 = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    assert len(grads) == len(grads2)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_zero_positions_gives_causal_ce_equal_ce():
    teacher, student, batch = _setup()
    batch["P"] = torch.zeros_like(batch["P"])
    batch["Ps"] = torch.zeros_like(batch["Ps"])
    w = LossWeights(alpha_ce=0.5, alpha_clm=0.0, alpha_causal_ce=0.5, alpha_causal_cos=0.1)
    with torch.no_grad():
        out = distill_losses(teacher, student, batch, w, teacher_sites={1: None}, student_sites={1: None})
    assert out["loss_causal_ce"].item() == out["loss_ce"].item()


@pytest.mark.parametrize("fused", [True, False])
def test_gradient_flows_through_student_source_pass_only(fused):
    teacher, student, batch = _setup(tie=False)
    w = LossWeights(alpha_ce=0.0, alpha_clm=0.0, alpha_causal_ce=1.0)
    out = distill_losses(
        teacher, student, batch, w, teacher_sites={2: None}, student_sites={0: None}, fused=fused
    )
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    emb = student.distilbert.embeddings.word_embeddings.weight.grad
    src_only = set(batch["src_ids"][batch["src_mask"].bool()].tolist()) - set(
        batch["base_ids"].flatten().tolist()
    )
    assert src_only
    assert all(emb[t].abs().sum() > 0 for t in src_only)
    student.zero_grad()
    out = distill_losses(
        teacher,
        student,
        batch,
        w,
        teacher_sites={2: None},
        student_sites={0: None},
        detach_student_source=True,
        fused=fused,
    )
    out["loss"].backward()
    emb = student.distilbert.embeddings.word_embeddings.weight.grad
    assert all(emb[t].abs().sum() == 0 for t in src_only)


def test_total_is_weighted_sum():
    teacher, student, batch = _setup()
    w = LossWeights(
        alpha_ce=0.25,
        alpha_mlm=0.25,
        alpha_cos=0.25,
        alpha_clm=0.0,
        alpha_causal_ce=0.25,
        alpha_causal_cos=0.1,
        alpha_mse=0.05,
    )
    with torch.no_grad():
        out = distill_losses(teacher, student, batch, w, teacher_sites={2: None}, student_sites={0: None})
    expected = sum(getattr(w, "alpha_" + k[5:]) * v for k, v in out.items() if k != "loss")
    assert math.isclose(out["loss"].item(), expected.item(), rel_tol=1e-6)
    assert set(out) == {
        "loss",
        "loss_ce",
        "loss_mlm",
        "loss_cos",
        "loss_causal_ce",
        "loss_causal_cos",
        "loss_mse",
    }
