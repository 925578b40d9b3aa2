"""Student initialisation from a teacher by copying named layers (reference `scripts/extract_distilbert.py` and
`scripts/extract.py`).

BERT -> DistilBERT: embeddings (word, position, LayerNorm), block i <- teacher block layers[i], the MLM head. The
vocab transform (head dense + LayerNorm) is copied by default (the reference left it randomly initialised unless
--vocab_transform was given). BERT/RoBERTa/GPT-2 -> the same architecture: embeddings, the chosen blocks, the LM
head (GPT-2: also ln_f). Saved as a stock `save_pretrained` folder.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch
from lmlab.errors import LmlabError
from torch import nn

DEFAULT_LAYERS = {n: [0, 2, 4, 7, 9, 11][:n] for n in range(1, 7)} | {9: [0, 2, 3, 4, 7, 8, 9, 10, 11]}


def default_layers(num_layers: int, teacher_layers: int) -> list[int]:
    if teacher_layers == 12 and num_layers in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[num_layers]
    raise LmlabError(
        f"no default layer choice for a {num_layers}-layer student of a {teacher_layers}-layer teacher; pass --layers"
    )


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.weight.data.copy_(src.weight.data)
    if getattr(dst, "bias", None) is not None and getattr(src, "bias", None) is not None:
        dst.bias.data.copy_(src.bias.data)


def bert_to_distilbert(
    teacher, layers: list[int], vocab_transform: bool = True, student_config: dict | None = None
):
    """A DistilBertForMaskedLM whose weights are copied from a BertForMaskedLM teacher."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tc = teacher.config
    if tc.model_type != "bert":
        raise LmlabError(f"a DistilBERT student needs a BERT teacher, got {tc.model_type}")
    _check_layers(layers, tc.num_hidden_layers)
    kwargs = dict(
        vocab_size=tc.vocab_size,
        dim=tc.hidden_size,
        n_heads=tc.num_attention_heads,
        hidden_dim=tc.intermediate_size,
        max_position_embeddings=tc.max_position_embeddings,
        activation=tc.hidden_act,
        pad_token_id=tc.pad_token_id,
        initializer_range=tc.initializer_range,
    )
    kwargs.update({k: v for k, v in (student_config or {}).items() if not k.endswith("_")})
    kwargs["n_layers"] = len(layers)
    kwargs["sinusoidal_pos_embds"] = (
        False  # the copied BERT table is what the reference ended up training with
    )
    for key in ("dim", "n_heads", "hidden_dim", "vocab_size"):
        expected = {
            "dim": tc.hidden_size,
            "n_heads": tc.num_attention_heads,
            "hidden_dim": tc.intermediate_size,
            "vocab_size": tc.vocab_size,
        }[key]
        if kwargs[key] != expected:
            raise LmlabError(
                f"student config {key}={kwargs[key]} differs from the teacher's {expected}; cannot copy weights"
            )
    cfg = DistilBertConfig(**kwargs)
    student = DistilBertForMaskedLM(cfg)
    tb = teacher.bert
    se = student.distilbert.embeddings
    se.word_embeddings.weight.data.copy_(tb.embeddings.word_embeddings.weight.data)
    se.position_embeddings.weight.data.copy_(tb.embeddings.position_embeddings.weight.data)
    _copy(se.LayerNorm, tb.embeddings.LayerNorm)
    for i, k in enumerate(layers):
        t, s = tb.encoder.layer[k], student.distilbert.transformer.layer[i]
        _copy(s.attention.q_lin, t.attention.self.query)
        _copy(s.attention.k_lin, t.attention.self.key)
        _copy(s.attention.v_lin, t.attention.self.value)
        _copy(s.attention.out_lin, t.attention.output.dense)
        _copy(s.sa_layer_norm, t.attention.output.LayerNorm)
        _copy(s.ffn.lin1, t.intermediate.dense)
        _copy(s.ffn.lin2, t.output.dense)
        _copy(s.output_layer_norm, t.output.LayerNorm)
    head = teacher.cls.predictions
    student.vocab_projector.weight.data.copy_(head.decoder.weight.data)
    student.vocab_projector.bias.data.copy_(
        head.bias.data if head.decoder.bias is None else head.decoder.bias.data
    )
    if vocab_transform:
        _copy(student.vocab_transform, head.transform.dense)
        _copy(student.vocab_layer_norm, head.transform.LayerNorm)
    return student


def same_architecture(teacher, layers: list[int]):
    """A copy of `teacher` keeping only blocks `layers` (BERT, RoBERTa, GPT-2, DistilBERT)."""
    from diito.sites import find_blocks, model_dims

    _check_layers(layers, model_dims(teacher)[0])
    cfg = copy.deepcopy(teacher.config)
    for attr in ("num_hidden_layers", "n_layer", "n_layers"):
        if hasattr(cfg, attr) and attr in cfg.to_dict():
            setattr(cfg, attr, len(layers))
    student = type(teacher)(cfg)
    state = teacher.state_dict()
    blocks_t = find_blocks(teacher)
    prefix = next(name for name, m in teacher.named_modules() if m is blocks_t) + "."
    new_state = {}
    for key, value in state.items():
        if key.startswith(prefix):
            idx, rest = key[len(prefix) :].split(".", 1)
            if int(idx) in layers:
                new_state[f"{prefix}{layers.index(int(idx))}.{rest}"] = value
        else:
            new_state[key] = value
    missing, unexpected = student.load_state_dict(new_state, strict=False)
    missing = [k for k in missing if "position_ids" not in k and not _is_tied(student, k)]
    if missing or unexpected:
        raise LmlabError(f"layer copy left missing={missing[:3]} unexpected={unexpected[:3]}")
    return student


def _is_tied(model, key: str) -> bool:
    return key.endswith("decoder.weight") or key.endswith("lm_head.weight")


def _check_layers(layers: list[int], n: int) -> None:
    if not layers:
        raise LmlabError("--layers must name at least one teacher layer")
    bad = [k for k in layers if not 0 <= k < n]
    if bad:
        raise LmlabError(f"--layers {bad} outside the teacher's layers 0..{n - 1}")


def extract(
    teacher_name: str,
    output_dir: str | Path,
    num_layers: int = 6,
    layers: list[int] | None = None,
    student_type: str = "distilbert",
    vocab_transform: bool = True,
    student_config: dict | None = None,
    allow_random_head: bool = False,
) -> Path:
    """Build and save the initialised student; returns the output folder. A teacher checkpoint without its LM
    head is refused (or, with `allow_random_head`, used with a random head and a warning)."""
    from transformers import (
        MODEL_FOR_MASKED_LM_MAPPING,
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    from diito.loading import load_with_head
    from diito.sites import model_dims

    try:
        masked = type(AutoConfig.from_pretrained(teacher_name)) in MODEL_FOR_MASKED_LM_MAPPING
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot load teacher {teacher_name}: {str(err).strip().splitlines()[0]}") from err
    cls, head = (
        (AutoModelForMaskedLM, "masked-LM head") if masked else (AutoModelForCausalLM, "causal-LM head")
    )
    teacher = load_with_head(cls, teacher_name, "teacher", head, "diito extract", allow_random_head)
    layers = list(layers) if layers else default_layers(num_layers, model_dims(teacher)[0])
    with torch.no_grad():
        if student_type == "distilbert" and teacher.config.model_type == "bert":
            student = bert_to_distilbert(teacher, layers, vocab_transform, student_config)
        elif student_type in (teacher.config.model_type, "same"):
            student = same_architecture(teacher, layers)
        else:
            raise LmlabError(
                f"cannot extract a {student_type} student from a {teacher.config.model_type} teacher"
            )
    out = Path(output_dir)
    student.save_pretrained(out)
    with contextlib.suppress(OSError, ValueError):
        AutoTokenizer.from_pretrained(teacher_name).save_pretrained(out)
    return out
