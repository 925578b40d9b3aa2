"""fp16 with dynamic loss scaling (on CPU: float16 autocast and GradScaler("cpu") follow the CUDA code path):
gradients are unscaled before the joint clipping, an overflowing update steps nothing and is redone at the
halved scale, and the scaler's state is saved (the CLI resume test is in test_invlm_cli.py)."""

import torch
from invariant_lm._testing import args, batches, snapshot, tiny
from invariant_lm.model import InvariantMLM
from invariant_lm.trainer import InvariantTrainer, OptimSettings, build_optimizers, environment_update


def _stepped(model, env):
    return [*model.body.parameters(), *model.heads[env].parameters()]


def test_gradients_are_unscaled_before_clipping():
    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["a", "b"])
    batch = batches(tok, 1)[0]
    # reference by hand: the same fp16-autocast forward, backward of loss x 2^12, gradients / 2^12, then the
    # clipping of body + head a
    ref = InvariantMLM.from_base(tiny("bert")[0], ["a", "b"])
    ref.set_trainable_heads(["a"])
    with torch.autocast("cpu", dtype=torch.float16):
        loss = ref(**batch).loss
    (loss * 2.0**12).backward()
    for p in _stepped(ref, "a"):
        p.grad /= 2.0**12
    ref_norm = torch.nn.utils.clip_grad_norm_(_stepped(ref, "a"), 0.05)
    assert ref_norm > 0.5  # clipping is active, so clipping scaled gradients would give other gradients
    opts = build_optimizers(model, OptimSettings(learning_rate=0.0), 4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    out_loss, norm, _ = environment_update(model, "a", [batch], *opts, max_grad_norm=0.05, scaler=scaler)
    assert abs(out_loss - loss.item()) < 1e-6
    assert abs(norm - ref_norm.item()) < 1e-5 * ref_norm.item()
    for p, q in zip(_stepped(model, "a"), _stepped(ref, "a"), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-12)
    assert scaler.get_scale() == 2.0**12  # no overflow: the scale only grows after 2000 good updates


def test_overflowing_update_steps_nothing_and_halves_the_scale():
    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["a", "b"])
    before = snapshot(model)
    body_opt, head_opts, body_sched, head_scheds = build_optimizers(
        model, OptimSettings(learning_rate=1e-2), 4
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients of the scaled loss overflow
    _, norm, _ = environment_update(
        model, "a", batches(tok, 1), body_opt, head_opts, body_sched, head_scheds, scaler=scaler
    )
    assert norm == float("inf") or norm != norm  # inf or nan
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert len(body_opt.state) == 0 and all(len(o.state) == 0 for o in head_opts.values())
    assert body_sched.last_epoch == 0 and head_scheds["a"].last_epoch == 0
    assert scaler.get_scale() == 2.0**39


def test_trainer_redoes_overflowed_updates_and_keeps_head_isolation():
    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["a", "b"])
    tr = InvariantTrainer(model, args(fp16=True), tokenizer=tok, total_updates=2)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    head_b = snapshot(model.heads["b"])
    b = batches(tok, 1)[0]
    while tr.updates < 1:
        tr.update("a", b)
    assert tr.updates == 1 and len(tr.log) == 1 and tr.env_updates["a"] == 1
    assert tr.scaler.get_scale() < 2.0**24  # it overflowed at least once before the update went through
    assert all(torch.equal(v, head_b[k]) for k, v in model.heads["b"].state_dict().items())
    assert tr.body_sched.last_epoch == 1 and tr.head_scheds["a"].last_epoch == 1
    state = tr.state_dict()
    assert state["grad_scaler"]["scale"] == tr.scaler.get_scale()
    other = InvariantTrainer(InvariantMLM.from_base(tiny("bert")[0], ["a", "b"]), args(fp16=True), tok)
    other.load_state_dict(state)
    assert other.scaler.get_scale() == tr.scaler.get_scale()
