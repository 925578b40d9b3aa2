"""Tiny Hugging Face models built from configs (no hub): BERT, RoBERTa, DistilBERT, GPT-2, GPT-NeoX, Llama, T5.

Sizes default to 2 layers, hidden 32, 2 heads, 128 positions; every field can be overridden. The vocabulary
and special-token ids come from the tokenizer, so model and tokenizer always agree.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RobertaConfig,
    T5Config,
)

from lmlab.testing.tokenizers import tiny_tokenizer

#: architecture -> the tokenizer style it is tested with
MODEL_TOKENIZER_STYLE = {
    "bert": "wordpiece",
    "distilbert": "wordpiece",
    "roberta": "roberta",
    "gpt2": "gpt2",
    "gpt_neox": "gpt2",
    "llama": "gpt2",
    "t5": "t5",
}

HEADS = {
    "mlm": AutoModelForMaskedLM,
    "clm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "seq_cls": AutoModelForSequenceClassification,
    "token_cls": AutoModelForTokenClassification,
    "base": AutoModel,
}


def tiny_config(
    arch: str,
    tokenizer: PreTrainedTokenizerBase,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    positions: int = 128,
    **overrides,
) -> PretrainedConfig:
    """A tiny config of `arch` (a key of MODEL_TOKENIZER_STYLE) whose vocabulary matches `tokenizer`."""
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    common = {"vocab_size": vocab, "pad_token_id": pad}
    if arch == "bert":
        cfg = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 2,
            max_position_embeddings=positions,
            **common,
        )
    elif arch == "roberta":
        cfg = RobertaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 2,
            max_position_embeddings=positions + pad + 1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **common,
        )
    elif arch == "distilbert":
        cfg = DistilBertConfig(
            dim=hidden,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=hidden * 2,
            max_position_embeddings=positions,
            **common,
        )
    elif arch == "gpt2":
        cfg = GPT2Config(
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **common,
        )
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=hidden * 4,
            max_position_embeddings=positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            **common,
        )
    elif arch == "llama":
        cfg = LlamaConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=hidden * 2,
            max_position_embeddings=positions,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **common,
        )
    elif arch == "t5":
        cfg = T5Config(
            d_model=hidden,
            d_kv=hidden // heads,
            d_ff=hidden * 2,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            decoder_start_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **common,
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(MODEL_TOKENIZER_STYLE)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(
    arch: str,
    head: str = "mlm",
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    **config_overrides,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A freshly initialised tiny model of `arch` with `head` (a key of HEADS), and its tokenizer.

    Deterministic for a given `seed`. Pass `attn_implementation="eager"` to force eager attention.
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(MODEL_TOKENIZER_STYLE[arch])
    attn = config_overrides.pop("attn_implementation", "sdpa")
    cfg = tiny_config(arch, tokenizer, **config_overrides)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {sorted(HEADS)}")
    torch.manual_seed(seed)
    model = HEADS[head].from_config(cfg, attn_implementation=attn)
    return model, tokenizer


def save_tiny_model(
    path: str | Path, arch: str, head: str = "mlm", seed: int = 0, **config_overrides
) -> Path:
    """Write a tiny model and its tokenizer to `path` as a `save_pretrained` folder (for offline
    `from_pretrained` tests) and return the path."""
    model, tok = tiny_model(arch, head, seed=seed, **config_overrides)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
