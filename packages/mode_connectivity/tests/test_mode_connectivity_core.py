"""Maths of mode connectivity: the sweep engine, barriers, distances, Bezier curves, adapter wiring, and the
permutation-symmetry experiment (straight path between a model and its permutation has a barrier, a trained
curve removes most of it)."""

import math

import pytest
import torch
from lmlab.errors import LmlabError
from lmlab.testing import tiny_model
from mode_connectivity.adapter import Adapter, adapter_state_dict, add_adapters, freeze_backbone
from mode_connectivity.barriers import barrier_metrics, distances
from mode_connectivity.curves import Curve, CurveSweep, bernstein_weights, curve_loss, polychain_weights
from mode_connectivity.evaluation import CandidateScorer
from mode_connectivity.models import DELTA_MARKERS, delta_state, prepare_model, unique_state
from mode_connectivity.sweep import InterpolationSweep, interpolate_state_dicts, interpolation_grid
from torch import nn


def _t5(seed=0, **kw):
    model, tok = tiny_model("t5", "seq2seq", seed=seed, **kw)
    return model.eval(), tok


def _batch(tok):
    enc = tok(
        [" [glue-mnli] premise: a cat [SEP] hypothesis: an animal", " [glue-mnli] short"],
        padding=True,
        return_tensors="pt",
    )
    labels = tok(
        ["<extra_id_0>entailment", "<extra_id_0>neutral"], padding=True, return_tensors="pt"
    ).input_ids
    labels[labels == tok.pad_token_id] = -100
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


# ------------------------------------------------------------------------------------------------ grid, sweep


def test_grid_26_points_rounded():
    grid = interpolation_grid(26)
    assert len(grid) == 26 and grid[0] == 0.0 and grid[-1] == 1.0
    assert grid[1] == 0.04 and grid[13] == 0.52 and grid == [round(i * 0.04, 3) for i in range(26)]
    assert interpolation_grid(6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(LmlabError, match="itpl_points"):
        interpolation_grid(1)


def test_full_model_sweep_endpoints_bit_exact_and_tied():
    model, _ = _t5()
    theta1 = {k: v.clone() for k, v in delta_state(model, "model").items()}
    other, _ = _t5(seed=1)
    theta2 = {k: v.clone() for k, v in delta_state(other, "model").items()}
    targets = delta_state(model, "model")
    assert "shared.weight" in targets and "lm_head.weight" not in targets  # tied copies once
    sweep = InterpolationSweep(targets, theta1, theta2)
    for a in (0.52, 0.0, 0.96, 1.0, 0.04):
        sweep.set(a)
        state = model.state_dict()
        for k in theta1:
            expected = (
                theta1[k] if a == 0.0 else theta2[k] if a == 1.0 else torch.lerp(theta1[k], theta2[k], a)
            )
            assert torch.equal(state[k], expected), (a, k)
        # the tie survives: encoder/decoder embeddings and lm_head still share the interpolated storage
        assert torch.equal(model.encoder.embed_tokens.weight, model.shared.weight)
        assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()


def test_sweep_midpoint_formula_and_out_of_place_equivalent():
    t1 = {"w": torch.randn(5, 3)}
    t2 = {"w": torch.randn(5, 3)}
    live = {"w": torch.zeros(5, 3)}
    sweep = InterpolationSweep(live, t1, t2)
    sweep.set(0.5)
    torch.testing.assert_close(live["w"], (t1["w"] + t2["w"]) / 2)
    for a in (0.0, 0.3, 1.0):
        sweep.set(a)
        assert torch.equal(live["w"], interpolate_state_dicts(t1, t2, a)["w"])


def test_identical_endpoints_give_identical_weights_everywhere():
    t = {"w": torch.randn(4, 4), "b": torch.randn(4)}
    live = {"w": torch.zeros(4, 4), "b": torch.zeros(4)}
    sweep = InterpolationSweep(live, t, {k: v.clone() for k, v in t.items()})
    for a in interpolation_grid(26):
        sweep.set(a)
        assert torch.equal(live["w"], t["w"]) and torch.equal(live["b"], t["b"])


def test_sweep_rejects_mismatched_endpoints():
    live = {"w": torch.zeros(2)}
    with pytest.raises(LmlabError, match="different tensors"):
        InterpolationSweep(live, {"w": torch.zeros(2)}, {"v": torch.zeros(2)})
    with pytest.raises(LmlabError, match="shape"):
        InterpolationSweep(live, {"w": torch.zeros(2)}, {"w": torch.zeros(3)})


def test_linear_probe_logits_are_linear_in_a():
    torch.manual_seed(0)
    probe = nn.Linear(6, 3)
    x = torch.randn(10, 6)
    t1 = {k: torch.randn_like(v) for k, v in probe.state_dict().items()}
    t2 = {k: torch.randn_like(v) for k, v in probe.state_dict().items()}
    probe.load_state_dict(t1)
    l1 = probe(x).detach()
    probe.load_state_dict(t2)
    l2 = probe(x).detach()
    sweep = InterpolationSweep(dict(probe.state_dict()), t1, t2)
    for a in interpolation_grid(26):
        sweep.set(a)
        torch.testing.assert_close(probe(x).detach(), (1 - a) * l1 + a * l2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["adapter", "lora", "prefix"])
def test_delta_sweep_touches_only_delta_tensors(method):
    model, _ = _t5()
    torch.manual_seed(1)
    model = prepare_model(model, method, adapter_size=4, lora_r=2, lora_alpha=4, num_virtual_tokens=3)
    targets = delta_state(model, method)
    assert targets and all(DELTA_MARKERS[method] in k for k in targets)
    if method == "adapter":
        assert set(targets) == set(adapter_state_dict(model))
    backbone = {k: v.clone() for k, v in model.state_dict().items() if k not in targets}
    theta1 = {k: v.clone() for k, v in targets.items()}
    theta2 = {k: torch.randn_like(v) for k, v in theta1.items()}
    sweep = InterpolationSweep(targets, theta1, theta2)
    for a, end in ((0.5, None), (1.0, theta2), (0.0, theta1)):
        sweep.set(a)
        state = model.state_dict()
        for k, v in backbone.items():
            assert torch.equal(state[k], v), (a, k)
        if end is not None:
            assert all(torch.equal(state[k], end[k]) for k in end)


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_peft_delta_tensors_are_the_trainable_ones(method):
    model, _ = _t5()
    cfg = model.config
    peft_model = prepare_model(model, method, lora_r=2, lora_alpha=4, num_virtual_tokens=3)
    delta = delta_state(peft_model, method)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert delta and trainable == set(delta)
    if method == "lora":
        assert {k.split(".")[-3] for k in delta} == {"lora_A", "lora_B"}
        assert (
            any(".q." in k for k in delta)
            and any(".v." in k for k in delta)
            and not any(".k." in k for k in delta)
        )
    else:  # one (virtual tokens, keys and values of every decoder layer) table, no projection by default
        width = 2 * cfg.num_decoder_layers * cfg.num_heads * cfg.d_kv
        assert {k: tuple(v.shape) for k, v in delta.items()} == {
            "prompt_encoder.default.embedding.weight": (3, width)
        }
    projected = prepare_model(_t5()[0], "prefix", num_virtual_tokens=3, prefix_projection=True)
    assert len(delta_state(projected, "prefix")) == 5  # the table + the MLP's two weights and two biases


def test_prefix_reaches_generation_and_candidate_scoring():
    model, tok = _t5()
    plain, _ = _t5()
    prefixed = prepare_model(model, "prefix", num_virtual_tokens=3).eval()
    with torch.no_grad():  # a prefix large enough to change every prediction of the tiny model
        prefixed.prompt_encoder.default.embedding.weight.normal_(
            0.0, 5.0, generator=torch.Generator().manual_seed(0)
        )
    b = _batch(tok)
    enc = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    greedy = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1}
    with torch.no_grad():
        for use_cache in (True, False):
            out = prefixed.generate(
                **enc, use_cache=use_cache, output_scores=True, return_dict_in_generate=True, **greedy
            )
            # each decoding step's logits = the teacher-forced forward (it carries the prefix) on the output
            forced = prefixed(**enc, decoder_input_ids=out.sequences[:, :-1]).logits
            torch.testing.assert_close(torch.stack(out.scores, 1), forced, atol=1e-4, rtol=0)
        assert (plain(**enc, decoder_input_ids=out.sequences[:, :-1]).logits - forced).abs().max() > 1.0
        # candidate scoring (encoder run once, then teacher forcing per candidate) = full forwards
        scorer = CandidateScorer(tok, ["entailment", "neutral"])
        expected = torch.zeros(2, 2)
        for c, ids in enumerate(scorer.ids):
            labels = torch.tensor(ids).repeat(2, 1)
            lp = prefixed(**enc, labels=labels).logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]
            expected[:, c] = lp[:, scorer.score_from : scorer.body_len[c]].sum(-1)
        torch.testing.assert_close(scorer.log_probs(prefixed, b), expected)
        plain_lp = CandidateScorer(tok, ["entailment", "neutral"]).log_probs(plain, b)
        assert not torch.allclose(plain_lp, expected)


# ------------------------------------------------------------------------------------------------ adapter


def test_adapter_count_shape_activation_no_bias():
    model, _ = _t5(layers=2)
    adapters = add_adapters(model, "houlsby", 6)
    l_enc, l_dec = model.config.num_layers, model.config.num_decoder_layers
    assert len(adapters) == 2 * l_enc + 3 * l_dec == 10
    d = model.config.d_model
    for ad in adapters:
        assert ad.adapter_A.shape == (d, 6) and ad.adapter_B.shape == (6, d)
        assert sum(p.numel() for p in ad.parameters()) == 2 * d * 6
        assert isinstance(ad.act, nn.SiLU)
    names = [k for k in model.state_dict() if "adapter_" in k]
    assert len(names) == 20 and all(k.endswith(("adapter.adapter_A", "adapter.adapter_B")) for k in names)
    assert sum("EncDecAttention.adapter" in k for k in names) == 2 * l_dec
    assert not any(k.startswith("encoder") and "EncDecAttention" in k for k in names)
    pfeiffer, _ = _t5()
    ads = add_adapters(pfeiffer, "pfeiffer", 6)
    assert len(ads) == l_enc + l_dec and all(isinstance(a.act, nn.ReLU) for a in ads)


def test_adapter_normal_init_with_given_std():
    torch.manual_seed(0)
    ad = Adapter(256, 64, r_mean=0.0, r_std=0.08)
    for w in (ad.adapter_A, ad.adapter_B):
        w = w.detach()
        assert abs(float(w.std()) - 0.08) < 0.004 and abs(float(w.mean())) < 0.003
    assert float(ad.adapter_B.abs().sum()) > 0  # W_B is not zero-initialised


def test_adapter_formula_and_zero_B_is_identity():
    model, tok = _t5()
    batch = _batch(tok)
    with torch.no_grad():
        bare = model(**batch).logits.clone()
    add_adapters(model, "houlsby", 4)
    with torch.no_grad():
        adapted = model(**batch).logits
        assert not torch.allclose(adapted, bare)  # Normal init of W_B changes the model
        for name, p in model.named_parameters():
            if name.endswith("adapter_B"):
                p.zero_()
        assert torch.equal(model(**batch).logits, bare)
    z = torch.randn(3, model.config.d_model)
    ad = Adapter(model.config.d_model, 4)
    torch.testing.assert_close(ad(z), z + torch.nn.functional.silu(z @ ad.adapter_A) @ ad.adapter_B)


def test_adapter_placement_on_sublayer_output_before_residual():
    """The adapter transforms the SelfAttention module's output (before dropout and residual add)."""
    model, tok = _t5()
    layer = model.encoder.block[0].layer[0]  # T5LayerSelfAttention
    seen = {}
    layer.SelfAttention.register_forward_hook(lambda m, a, out: seen.__setitem__("raw", out[0].clone()))
    add_adapters(model, "houlsby", 4)
    layer.register_forward_hook(lambda m, a, out: seen.__setitem__("layer", out[0].clone()))
    layer.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("h", (a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True
    )
    with torch.no_grad():
        model(**_batch(tok))
        expected = seen["h"] + layer.SelfAttention.adapter(seen["raw"])
    torch.testing.assert_close(seen["layer"], expected)


def test_freeze_backbone_only_adapters_trainable():
    model, _ = _t5()
    add_adapters(model, "houlsby", 4)
    freeze_backbone(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("adapter_" in n for n in trainable)


# ------------------------------------------------------------------------------------------------ barriers


def test_barriers_flat_linear_v_and_bulge():
    xs = [0.0, 0.25, 0.5, 0.75, 1.0]
    flat = barrier_metrics(xs, [0.8] * 5, [1.0] * 5)
    assert (
        flat["perf_barrier"] == 0
        and flat["loss_barrier"] == 0
        and flat["min_drop"] == 0
        and flat["connected"]
    )
    lin = barrier_metrics(xs, [0.6, 0.65, 0.7, 0.75, 0.8], [2.0, 1.75, 1.5, 1.25, 1.0])
    assert lin["perf_barrier"] == pytest.approx(0.0, abs=1e-12) and lin["loss_barrier"] == pytest.approx(
        0, abs=1e-12
    )
    v = barrier_metrics(xs, [0.8, 0.6, 0.3, 0.6, 0.8], [1.0, 1.5, 3.0, 1.5, 1.0])
    assert v["perf_barrier"] == pytest.approx(0.5) and v["perf_barrier_argmax_a"] == 0.5
    assert v["loss_barrier"] == pytest.approx(2.0) and v["loss_barrier_argmax_a"] == 0.5
    assert v["min_drop"] == pytest.approx(0.5) and not v["connected"]
    # asymmetric ends: chord at a=0.25 is 0.75*0.6+0.25*1.0 = 0.7; metric 0.5 -> barrier 0.2
    asym = barrier_metrics(xs, [0.6, 0.5, 0.8, 0.9, 1.0])
    assert asym["perf_barrier"] == pytest.approx(0.2) and asym["perf_barrier_argmax_a"] == 0.25
    assert asym["min_drop"] == pytest.approx(0.1)
    bulge = barrier_metrics(xs, [0.5, 0.7, 0.9, 0.7, 0.5], [1.0, 0.5, 0.2, 0.5, 1.0])
    assert bulge["perf_barrier"] == 0.0 and bulge["loss_barrier"] == 0.0 and bulge["min_drop"] == 0.0
    assert barrier_metrics(xs, [0.8, 0.795, 0.8, 0.8, 0.8], tol=0.01)["connected"]


# ------------------------------------------------------------------------------------------------ distances


def test_distance_symmetric_self_zero_rms_and_key_order():
    g = torch.Generator().manual_seed(0)
    a = {"x": torch.randn(3, 4, generator=g), "y": torch.randn(5, generator=g)}
    b = {"y": torch.randn(5, generator=g), "x": torch.randn(3, 4, generator=g)}
    d_ab, d_ba = distances(a, b), distances(b, a)
    assert d_ab["l2"] == pytest.approx(d_ba["l2"]) and d_ab["cosine_similarity"] == pytest.approx(
        d_ba["cosine_similarity"]
    )
    assert d_ab["n_params"] == 17 and d_ab["rms"] == pytest.approx(d_ab["l2"] / math.sqrt(17))
    va = torch.cat([a["x"].flatten(), a["y"]]).double()
    vb = torch.cat([b["x"].flatten(), b["y"]]).double()
    assert d_ab["l2"] == pytest.approx(float((va - vb).norm()))
    assert d_ab["cosine_similarity"] == pytest.approx(float(va @ vb / (va.norm() * vb.norm())))
    self_d = distances(a, dict(reversed(list(a.items()))))
    assert self_d["l2"] == 0.0 and self_d["cosine_similarity"] == pytest.approx(1.0)
    with pytest.raises(LmlabError):
        distances(a, {"x": a["x"]})


def test_distance_counts_tied_weights_once():
    model, _ = _t5()
    other, _ = _t5(seed=1)
    s1, aliases = unique_state(model)
    full1, full2 = model.state_dict(), other.state_dict()
    d_full = distances(full1, full2, aliases)
    d_unique = distances(s1, unique_state(other)[0])
    assert d_full["n_params"] == d_unique["n_params"] == sum(v.numel() for v in s1.values())
    assert d_full["l2"] == pytest.approx(d_unique["l2"])


# ------------------------------------------------------------------------------------------------ curves


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_bernstein_weights_sum_to_one(n):
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):
        w = bernstein_weights(t, n)
        assert w.shape == (n + 2,) and float(w.sum()) == pytest.approx(1.0)
        assert float(polychain_weights(t, n).sum()) == pytest.approx(1.0)


def test_bezier_endpoints_exact_and_midpoint_formula():
    g = torch.Generator().manual_seed(0)
    t1 = {"w": torch.randn(4, 3, generator=g)}
    t2 = {"w": torch.randn(4, 3, generator=g)}
    curve = Curve(t1, t2, n_bends=1, init="normal", generator=g)
    assert torch.equal(curve.point(0.0)["w"], t1["w"]) and torch.equal(curve.point(1.0)["w"], t2["w"])
    c = curve.control_points()[0]["w"]
    torch.testing.assert_close(curve.point(0.5)["w"], 0.25 * t1["w"] + 0.5 * c + 0.25 * t2["w"])
    t = 0.3
    torch.testing.assert_close(
        curve.point(t)["w"], (1 - t) ** 2 * t1["w"] + 2 * t * (1 - t) * c + t**2 * t2["w"]
    )
    chord = Curve(t1, t2, n_bends=1)  # default init: the chord midpoint -> the curve is the straight line
    torch.testing.assert_close(chord.point(0.3)["w"], torch.lerp(t1["w"], t2["w"], 0.3))
    poly = Curve(t1, t2, n_bends=1, kind="polychain", init="normal", generator=g)
    pc = poly.control_points()[0]["w"]
    torch.testing.assert_close(poly.point(0.25)["w"], 0.5 * t1["w"] + 0.5 * pc)


def test_curve_only_control_points_get_gradients_and_endpoints_fixed():
    model, tok = _t5()
    add_adapters(model, "houlsby", 4)
    freeze_backbone(model)
    t1 = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    t2 = {k: torch.randn_like(v) * 0.02 for k, v in t1.items()}
    curve = Curve(t1, t2, n_bends=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = curve_loss(model, curve, 0.4, _batch(tok))
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in curve.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(curve.start[k], t1[k]) and torch.equal(curve.end[k], t2[k]) for k in t1)


# ------------------------------------------------------------------------------------------------ permutations


def test_t5_ffn_hidden_unit_permutation_gives_identical_model():
    model, tok = _t5()
    batch = _batch(tok)
    perm_model, _ = _t5()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in list(perm_model.encoder.block) + list(perm_model.decoder.block):
            ff = block.layer[-1].DenseReluDense
            p = torch.randperm(ff.wi.weight.shape[0], generator=g)
            ff.wi.weight.copy_(ff.wi.weight[p])
            ff.wo.weight.copy_(ff.wo.weight[:, p])
        out_a, out_b = model(**batch), perm_model(**batch)
    torch.testing.assert_close(out_a.logits, out_b.logits, atol=1e-5, rtol=1e-5)
    assert distances(unique_state(model)[0], unique_state(perm_model)[0])["l2"] > 1.0


class _MLP(nn.Module):
    def __init__(self, hidden=16):
        super().__init__()
        self.l1, self.l2 = nn.Linear(2, hidden), nn.Linear(hidden, 2)

    def forward(self, x, labels):
        logits = self.l2(torch.relu(self.l1(x)))
        return type("Out", (), {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)})


def test_permuted_model_identical_line_has_barrier_curve_removes_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 2, generator=g)
    y = ((x[:, 0] * x[:, 1]) > 0).long()
    torch.manual_seed(0)
    model = _MLP()
    opt = torch.optim.Adam(model.parameters(), 0.03)
    for _ in range(300):
        opt.zero_grad()
        model(x, y).loss.backward()
        opt.step()
    theta1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perm = torch.randperm(16, generator=g)
    theta2 = dict(theta1)
    theta2["l1.weight"], theta2["l1.bias"] = theta1["l1.weight"][perm], theta1["l1.bias"][perm]
    theta2["l2.weight"] = theta1["l2.weight"][:, perm]
    twin = _MLP()
    twin.load_state_dict(theta2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, y).logits, twin(x, y).logits, atol=1e-5, rtol=1e-5)

    def evaluate():
        with torch.no_grad():
            out = model(x, y)
            return float((out.logits.argmax(-1) == y).float().mean()), float(out.loss)

    grid = interpolation_grid(11)
    targets = dict(model.state_dict())
    sweep = InterpolationSweep(targets, theta1, theta2)
    line = []
    for a in grid:
        sweep.set(a)
        line.append(evaluate())
    linear = barrier_metrics(grid, [m for m, _ in line], [lo for _, lo in line])
    assert line[0][0] == line[-1][0] and line[0][1] == pytest.approx(
        line[-1][1], abs=1e-6
    )  # identical behaviour
    assert linear["perf_barrier"] > 0.2 and linear["loss_barrier"] > 0.5 and not linear["connected"]

    curve = Curve(theta1, theta2, n_bends=1)
    opt = torch.optim.Adam(curve.parameters(), 0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        t = float(torch.rand(1, generator=gen))
        opt.zero_grad()
        curve_loss(model, curve, t, {"x": x, "labels": y}).backward()
        opt.step()
    assert all(
        torch.equal(curve.start[k], theta1[k]) and torch.equal(curve.end[k], theta2[k]) for k in theta1
    )
    cs = CurveSweep(curve, targets)
    along = []
    for t in grid:
        cs.set(t)
        along.append(evaluate())
    bent = barrier_metrics(grid, [m for m, _ in along], [lo for _, lo in along])
    assert bent["perf_barrier"] < 0.25 * linear["perf_barrier"]
    assert bent["loss_barrier"] < 0.25 * linear["loss_barrier"]
