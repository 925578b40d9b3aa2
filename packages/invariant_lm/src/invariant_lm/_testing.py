"""Helpers of the invariant_lm tests (tiny models without dropout, tokenised text, batches)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from lmlab.testing import tiny_model, tiny_texts


def tiny(arch: str = "bert", seed: int = 0, dropout: bool = False, **kw):
    """A tiny MLM (dropout off unless asked) and its tokenizer."""
    over = {} if dropout else _no_dropout(arch)
    over.update(kw)
    return tiny_model(arch, "mlm", seed=seed, **over)


def _no_dropout(arch: str) -> dict:
    if arch == "distilbert":
        return {"dropout": 0.0, "attention_dropout": 0.0}
    return {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def tokenised(tok, n: int = 24, block: int = 24, offset: int = 0):
    from datasets import Dataset

    from invariant_lm.data import tokenize

    texts = tiny_texts(n + offset)[offset:]
    return tokenize(Dataset.from_dict({"text": texts}), tok, block)


def batches(tok, k: int, bs: int = 4, seed: int = 0, block: int = 24):
    from invariant_lm.data import EnvironmentStreams, make_collator

    streams = EnvironmentStreams({"x": tokenised(tok, 24, block)}, make_collator(tok), bs, seed)
    return [streams.batch(0, i) for i in range(k)]


def args(**kw) -> SimpleNamespace:
    base = dict(
        learning_rate=1e-3, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        adafactor=False, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, max_steps=10,
        per_device_train_batch_size=4, seed=0, mlm_probability=0.15,
    )  # fmt: skip
    base.update(kw)
    return SimpleNamespace(**base)


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def deep(x):
    return copy.deepcopy(x)
