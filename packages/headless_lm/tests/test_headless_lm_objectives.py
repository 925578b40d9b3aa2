"""Properties 4-10 of the spec: causal and masked objectives on tiny HF models, head removal and attachment."""

import pytest
import torch
import torch.nn.functional as F
from headless_lm.losses import cwt_loss
from headless_lm.masking import mask_tokens
from headless_lm.modeling import add_lm_head, backbone, build_model, count_parameters, lm_head, remove_lm_head
from headless_lm.objectives import causal_lm_loss, masked_lm_loss
from lmlab.errors import LmlabError
from lmlab.testing import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode


def _ids(vocab, b=2, t=12, seed=0, low=5):
    return torch.randint(low, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "llama"])
def test_causal_loss_equals_explicit_recomputation(arch):
    model, tok = tiny_model(arch, "clm", attn_implementation="eager")
    model.eval()
    ids = _ids(len(tok), b=3, t=10)
    out = causal_lm_loss(model, ids)
    hidden = backbone(model)(input_ids=ids).last_hidden_state
    emb = model.get_input_embeddings().weight
    pred = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = emb[ids[:, 1:].reshape(-1)]
    expected = F.cross_entropy(pred @ target.T, torch.arange(pred.shape[0]))
    assert torch.allclose(out.emb_loss, expected, atol=1e-5)
    assert out.num_predictions == 27
    assert out.lm_loss is None
    # shared negatives: the 2-sequence loss is not the mean of single-sequence losses
    single = [causal_lm_loss(model, ids[i : i + 1]).total_loss for i in range(2)]
    pair = causal_lm_loss(model, ids[:2]).total_loss
    assert abs(pair.item() - torch.stack(single).mean().item()) > 1e-4


def test_padding_invariance():
    model, tok = tiny_model("gpt_neox", "clm", attn_implementation="eager")
    model.eval()
    ids = _ids(len(tok), b=2, t=10, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    padded = ids.clone()
    padded[1, 6:] = tok.pad_token_id or 0
    out = causal_lm_loss(model, padded, attention_mask=mask, lm_loss_weight=1.0)
    hidden0 = backbone(model)(input_ids=ids[:1]).last_hidden_state[0]
    hidden1 = backbone(model)(input_ids=ids[1:2, :6]).last_hidden_state[0]
    emb = model.get_input_embeddings().weight
    pred = torch.cat([hidden0[:-1], hidden1[:-1]])
    tgt_ids = torch.cat([ids[0, 1:], ids[1, 1:6]])
    assert out.num_predictions == 9 + 5
    assert torch.allclose(out.emb_loss, cwt_loss(pred, emb[tgt_ids]), atol=1e-5)
    assert torch.allclose(
        out.lm_loss, F.cross_entropy(model.get_output_embeddings()(pred), tgt_ids), atol=1e-5
    )


def test_gradient_of_target_only_token_headless_vs_vanilla():
    vanilla, tok = tiny_model("gpt_neox", "clm", attn_implementation="eager")
    headless = remove_lm_head(vanilla)
    ids = _ids(len(tok), b=2, t=8, low=10)
    ids[ids == 7] = 8
    ids[0, -1] = 7  # token 7 occurs only at the last position: only ever a target
    causal_lm_loss(headless, ids).total_loss.backward()
    grad = headless.get_input_embeddings().weight.grad
    assert grad[7].abs().sum() > 0
    headless.zero_grad(set_to_none=True)
    causal_lm_loss(vanilla, ids, emb_loss_weight=0.0, lm_loss_weight=1.0).total_loss.backward()
    assert torch.count_nonzero(vanilla.get_input_embeddings().weight.grad[7]) == 0
    assert vanilla.get_output_embeddings().weight.grad[7].abs().sum() > 0


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_masked_loss_anchors_targets_and_vanilla_labels(arch):
    model, tok = tiny_model(arch, "mlm", attn_implementation="eager")
    model.eval()
    ids = _ids(len(tok), b=4, t=16, seed=2)
    masked = mask_tokens(
        ids,
        vocab_size=len(tok),
        mask_token_id=tok.mask_token_id,
        special_token_ids=tok.all_special_ids,
        generator=torch.Generator().manual_seed(0),
    )
    out = masked_lm_loss(model, ids, masking=masked, mlm_loss_weight=1.0)
    hidden = backbone(model)(input_ids=masked.input_ids).last_hidden_state
    emb = model.get_input_embeddings().weight
    expected = cwt_loss(hidden[masked.mask], emb[ids[masked.mask]])  # original ids, raw last hidden state
    assert torch.allclose(out.emb_loss, expected, atol=1e-5)
    logits = model(input_ids=masked.input_ids).logits
    assert torch.allclose(out.lm_loss, F.cross_entropy(logits[masked.mask], ids[masked.mask]), atol=1e-5)
    sparse = masked_lm_loss(model, ids, masking=masked, mlm_loss_weight=1.0, full_head=False)
    assert torch.allclose(sparse.lm_loss, out.lm_loss, atol=1e-5)
    assert out.masked is masked and out.num_predictions == int(masked.mask.sum())
    # generated masking needs a mask id, and is deterministic under a generator
    with pytest.raises(LmlabError, match="mask_token_id"):
        masked_lm_loss(model, ids)
    a = masked_lm_loss(
        model, ids, mask_token_id=tok.mask_token_id, generator=torch.Generator().manual_seed(3)
    )
    b = masked_lm_loss(
        model, ids, mask_token_id=tok.mask_token_id, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a.total_loss, b.total_loss)


def test_mixed_objective_arithmetic_and_head_presence():
    model, tok = tiny_model("gpt_neox", "clm", attn_implementation="eager")
    model.eval()
    ids = _ids(len(tok), seed=4)
    emb_only = causal_lm_loss(model, ids, emb_loss_weight=1.0, lm_loss_weight=0.0)
    ce_only = causal_lm_loss(model, ids, emb_loss_weight=0.0, lm_loss_weight=1.0)
    mixed = causal_lm_loss(model, ids, emb_loss_weight=0.5, lm_loss_weight=2.0)
    assert emb_only.lm_loss is None and ce_only.emb_loss is None
    assert torch.allclose(mixed.total_loss, 0.5 * emb_only.emb_loss + 2.0 * ce_only.lm_loss, atol=1e-5)
    headless = build_model("clm", "tiny-gpt", headless=True)
    assert lm_head(headless) is None and lm_head(build_model("clm", "tiny-gpt")) is not None
    with pytest.raises(LmlabError, match="headless"):
        causal_lm_loss(headless, ids, lm_loss_weight=1.0)


@pytest.mark.parametrize(
    ("kind", "name", "vocab", "positions", "headless_n", "vanilla_n"),
    [
        ("clm", "pythia-70m", None, None, 44_670_976, 70_426_624),
        ("clm", "pythia-160m", None, None, 123_689_472, 162_322_944),
        ("mlm", "bert-base", 50_277, 128, 123_768_576, 124_410_981),
    ],
)
def test_head_removal_parameter_counts(kind, name, vocab, positions, headless_n, vanilla_n):
    torch.manual_seed(0)
    vanilla = build_model(kind, name, vocab_size=vocab, max_position_embeddings=positions)
    assert count_parameters(vanilla) == vanilla_n
    assert count_parameters(remove_lm_head(vanilla)) == headless_n


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.last_dims = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                self.last_dims.add(t.shape[-1])
        return out


def test_no_vocabulary_sized_tensor_in_headless_step():
    vocab = 997
    model = build_model("clm", "tiny-gpt", vocab_size=vocab, headless=True)
    ids = torch.randint(0, vocab, (2, 16))
    with _ShapeRecorder() as rec:
        causal_lm_loss(model, ids).total_loss.backward()
    assert vocab not in rec.last_dims
    vanilla = build_model("clm", "tiny-gpt", vocab_size=vocab)
    with _ShapeRecorder() as rec2:
        causal_lm_loss(vanilla, ids, emb_loss_weight=0, lm_loss_weight=1).total_loss.backward()
    assert vocab in rec2.last_dims  # the recorder can see a V-sized tensor when there is one


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2", "llama"])
def test_add_lm_head_copies_embeddings(arch):
    model, tok = tiny_model(arch, "clm", attn_implementation="eager")
    headless = remove_lm_head(model)
    lm = add_lm_head(headless)
    head = lm.get_output_embeddings()
    emb = lm.get_input_embeddings().weight
    assert head.bias is None
    assert torch.equal(head.weight, emb)
    assert head.weight.data_ptr() != emb.data_ptr()
    assert head.weight.data_ptr() != headless.get_input_embeddings().weight.data_ptr()
    lm.eval()
    ids = _ids(len(tok), seed=5)
    hidden = backbone(lm)(input_ids=ids).last_hidden_state
    assert torch.allclose(lm(input_ids=ids).logits, hidden @ emb.T, atol=1e-5)


def test_same_seed_gives_identical_backbones():
    torch.manual_seed(3)
    a = build_model("clm", "tiny-gpt", headless=True)
    torch.manual_seed(3)
    b = build_model("clm", "tiny-gpt")
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), backbone(b).state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)


def test_too_long_sequence_is_an_error():
    model = build_model("clm", "tiny-gpt", max_position_embeddings=8, headless=True)
    with pytest.raises(LmlabError, match="positions"):
        causal_lm_loss(model, torch.zeros(1, 9, dtype=torch.long))


def test_attention_backends_on_cpu():
    from headless_lm.modeling import attention_implementation

    assert attention_implementation("hf") == "eager"
    assert attention_implementation("sdpa") == "sdpa"
    for backend in ("flash_attention", "xformers"):
        with pytest.raises(LmlabError, match="gpu|GPU|CUDA"):
            attention_implementation(backend, "cpu")
    with pytest.raises(LmlabError, match="one of"):
        attention_implementation("nope")


@pytest.mark.gpu
def test_bf16_headless_step_on_cuda():
    model = build_model("clm", "tiny-gpt", headless=True).cuda()
    ids = torch.randint(0, 1000, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = causal_lm_loss(model, ids)
    assert out.total_loss.dtype == torch.float32 and torch.isfinite(out.total_loss)
    out.total_loss.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
