"""Models from shipped architecture configs, and removing / attaching the LM head of any Hugging Face model.

No attribute names are hard-coded: the backbone is `model.base_model` (whatever `base_model_prefix` names it),
the input embeddings come from `get_input_embeddings()`, the head is the output embedding /
the one child module that is not the backbone. Works for GPT-NeoX, GPT-2, Llama-style, BERT and RoBERTa.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from lmlab.errors import LmlabError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)

_PYTHIA = {
    "model_type": "gpt_neox",
    "vocab_size": 50304,
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000,
    "use_parallel_residual": True,
    "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "max_position_embeddings": 2048,
    "hidden_act": "gelu",
    "bos_token_id": 0,
    "eos_token_id": 0,
}

#: shipped architecture configs (`build_model(kind, NAME)`); sizes of the paper / Pythia suite
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "pythia-70m": {
        **_PYTHIA,
        "hidden_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    "pythia-160m": {
        **_PYTHIA,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "bert-base": {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
    },
    "bert-small": {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "max_position_embeddings": 512,
    },
    # the paper's "11M GPT-2" of the micro-batch ablation (Fig. 7): ~10.6M non-embedding parameters
    "gpt2-11m": {
        "model_type": "gpt2",
        "vocab_size": 50304,
        "n_embd": 384,
        "n_layer": 6,
        "n_head": 6,
        "n_positions": 1024,
        "tie_word_embeddings": False,
    },
    "tiny-gpt": {
        **_PYTHIA,
        "vocab_size": 1000,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "max_position_embeddings": 256,
    },
    "tiny-bert": {
        "model_type": "bert",
        "vocab_size": 1000,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
    },
}

KINDS = ("clm", "mlm")


def architecture_config(config: str | dict | PretrainedConfig | Path) -> PretrainedConfig:
    """A transformers config from a shipped name, a JSON path (or save_pretrained folder), a dict or a config."""
    if isinstance(config, PretrainedConfig):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        data = dict(config)
    elif str(config) in ARCHITECTURES:
        data = dict(ARCHITECTURES[str(config)])
    else:
        path = Path(config)
        if path.is_dir():
            return AutoConfig.from_pretrained(path)
        if not path.is_file():
            raise LmlabError(
                f"unknown architecture {config!r}: give a shipped name ({', '.join(ARCHITECTURES)}), "
                "a config.json path or a model folder"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise LmlabError(f"architecture config {config!r} has no model_type")
    return AutoConfig.for_model(model_type, **data)


def build_model(
    kind: str,
    config: str | dict | PretrainedConfig | Path,
    *,
    vocab_size: int | None = None,
    max_position_embeddings: int | None = None,
    attn_implementation: str = "eager",
    headless: bool = False,
) -> PreTrainedModel:
    """A freshly initialised `...ForCausalLM` (kind "clm") or `...ForMaskedLM` ("mlm"), or with `headless` its
    backbone alone (the LM head is never allocated in training).

    The head is built and then dropped so that a headless and a vanilla model made under the same seed have
    bit-identical backbones.
    """
    if kind not in KINDS:
        raise LmlabError(f"kind must be one of {KINDS}, got {kind!r}")
    cfg = architecture_config(config)
    if vocab_size is not None:
        cfg.vocab_size = int(vocab_size)
    if max_position_embeddings is not None:
        if hasattr(cfg, "n_positions"):
            cfg.n_positions = int(max_position_embeddings)
        else:
            cfg.max_position_embeddings = int(max_position_embeddings)
    auto = AutoModelForCausalLM if kind == "clm" else AutoModelForMaskedLM
    model = auto.from_config(cfg, attn_implementation=attn_implementation)
    return remove_lm_head(model) if headless else model


def backbone(model: nn.Module) -> PreTrainedModel:
    """The transformer body whose output has `last_hidden_state` (the model itself when it is headless)."""
    body = getattr(model, "base_model", None)
    if body is None:
        raise LmlabError(f"{type(model).__name__} is not a Hugging Face PreTrainedModel (no base_model)")
    return body


def is_headless(model: nn.Module) -> bool:
    return backbone(model) is model


def lm_head(model: nn.Module) -> nn.Module | None:
    """The LM head module of `model` (None for a headless backbone): the one child that is not the backbone.

    For causal models it is the output-embedding Linear; for BERT/RoBERTa the whole MLM head (transform +
    decoder), so that `lm_head(model)(hidden)` gives the model's own logits.
    """
    body = backbone(model)
    if body is model:
        return None
    others = [module for module in model.children() if module is not body]
    if len(others) == 1:
        return others[0]
    out = model.get_output_embeddings()
    if out is None:
        raise LmlabError(f"cannot find the LM head of {type(model).__name__}")
    return out


def remove_lm_head(model: PreTrainedModel) -> PreTrainedModel:
    """The headless model: the backbone without the LM head (GPT-NeoX loses its untied V x D projection,
    BERT its transform, LayerNorm and decoder bias). `model` is not modified; returns `model` itself when it
    is already headless."""
    return backbone(model)


def add_lm_head(model: PreTrainedModel, init: str = "embeddings") -> PreTrainedModel:
    """A `...ForCausalLM` with `model`'s backbone and a bias-free head whose weight is a *copy* of the input
    embeddings (init="embeddings", the paper's fine-tuning start, logits = h E^T) or freshly initialised
    (init="random"). The config says `tie_word_embeddings=false`: head and embeddings train separately."""
    if init not in ("embeddings", "random"):
        raise LmlabError(f"init must be embeddings or random, got {init!r}")
    body = backbone(model)
    cfg = copy.deepcopy(body.config)
    cfg.tie_word_embeddings = False
    attn = getattr(body.config, "_attn_implementation", None) or "eager"
    lm = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)
    missing, unexpected = backbone(lm).load_state_dict(body.state_dict(), strict=False)
    if missing or unexpected:
        raise LmlabError(
            f"backbone weights do not fit a {type(lm).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    head = lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise LmlabError(f"{type(lm).__name__} has a biased LM head; the copied-E head must be bias-free")
    embeddings = body.get_input_embeddings().weight
    if init == "embeddings":
        with torch.no_grad():
            head.weight = nn.Parameter(embeddings.detach().clone())
    lm.to(embeddings.device)
    return lm


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied ones counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def register_xformers_attention() -> str:
    """Register an xformers memory-efficient attention under the name "xformers" in transformers' attention
    registry (no vendored modeling files) and return that name. Needs the [gpu] extra and CUDA."""
    import xformers.ops as xops  # lazy: optional dependency
    from transformers import AttentionInterface

    def xformers_attention(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
    ):
        # transformers passes (B, H, T, d); xformers wants (B, T, H, d). Masks become an additive bias.
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        if k.shape[2] != q.shape[2]:  # grouped-query attention: repeat key/value heads
            rep = q.shape[2] // k.shape[2]
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
        if attention_mask is not None:
            bias = attention_mask.to(q.dtype).expand(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        else:
            bias = xops.LowerTriangularMask() if causal else None
        out = xops.memory_efficient_attention(
            q, k, v, attn_bias=bias, p=dropout if module.training else 0.0, scale=scaling
        )
        return out, None

    AttentionInterface.register("xformers", xformers_attention)
    return "xformers"


def attention_implementation(backend: str, device: str = "cpu") -> str:
    """transformers' attn_implementation for a reference backend name (hf, sdpa, flash_attention, xformers)."""
    from lmlab.device import resolve_attn_implementation

    from headless_lm.config import ATTENTION

    if backend not in ATTENTION:
        raise LmlabError(f"attention backend must be one of {', '.join(ATTENTION)}, got {backend!r}")
    name = resolve_attn_implementation(ATTENTION[backend], device)
    return register_xformers_attention() if name == "xformers" else name
