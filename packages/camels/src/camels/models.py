"""Loading base models and tokenizers (any causal LM: GPT-2, GPT-NeoX/Pythia, Llama-style), strictly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lmlab.errors import LmlabError


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise LmlabError(f"cannot load tokenizer {name!r}: {str(err).splitlines()[0]}") from None
    if tok.eos_token_id is None:
        raise LmlabError(f"tokenizer {name!r} has no EOS token; CaMeLS answers end with EOS")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"state dict {path} does not exist")
    if path.suffix == ".safetensors":
        from lmlab.io import load_safetensors

        return load_safetensors(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_causal_lm(
    name: str,
    state_dict: str | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | None = None,
) -> Any:
    """A causal LM from a folder or hub name, optionally overwritten strictly by a state-dict file."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, attn_implementation=attn_implementation, dtype=dtype
        )
    except OSError as err:
        raise LmlabError(f"cannot load model {name!r}: {str(err).splitlines()[0]}") from None
    if state_dict:
        result = model.load_state_dict(load_state_dict_file(state_dict), strict=False)
        missing = [
            k for k in result.missing_keys if "lm_head" not in k or not model.config.tie_word_embeddings
        ]
        if missing or result.unexpected_keys:
            raise LmlabError(
                f"{state_dict} does not match {name}: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
            )
        model.tie_weights()
    return model


def is_large(model: Any) -> bool:
    return sum(p.numel() for p in model.parameters()) > 500_000_000
