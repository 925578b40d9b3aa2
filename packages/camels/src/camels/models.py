"""Loading base models and tokenizers (any causal LM: GPT-2, GPT-NeoX/Pythia, Llama-style), strictly."""

from __future__ import annotations

import os
import sys
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
        if tok.sep_token_id is None:
            raise LmlabError(
                f"tokenizer {name!r} has neither an EOS nor a SEP token, and CaMeLS answers end with one: add an "
                "EOS token to it (tokenizer.add_special_tokens, then resize the model's embeddings) and pass it "
                "with --tokenizer_name"
            )
        print(
            f"[camels] tokenizer {name!r} has no EOS token: its SEP token {tok.sep_token!r} ends answers instead",
            file=sys.stderr,
        )
        tok.eos_token = tok.sep_token
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_torch_file(path: str | os.PathLike, what: str, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors, numbers, strings and containers only, so a
    crafted pickle cannot run code. A file that is missing, not a torch file, or holds other objects is an
    LmlabError naming `what` (e.g. "state dict") and the file."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err):
            raise LmlabError(f"{what} {path} is not a torch file (cannot unpickle it)") from None
        raise LmlabError(
            f"{what} {path} holds objects other than tensors and plain data, so it was not loaded "
            "(weights_only=True); use a file written by camels, or torch.save of a plain state dict"
        ) from None
    except Exception as err:  # a truncated, corrupt or foreign file
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise LmlabError(f"cannot read {what} {path} ({type(err).__name__}: {first})") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"state dict {path} does not exist")
    if path.suffix == ".safetensors":
        from lmlab.io import load_safetensors

        return load_safetensors(path)
    state = load_torch_file(path, "state dict")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise LmlabError(f"state dict {path} holds a {type(state).__name__}, not a dict of tensors")
    return state


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


def checked_resume(cfg: Any, output_dir: str | os.PathLike, command: str, counter: str) -> str | None:
    """The checkpoint a Lightning command resumes from (`lmlab.training.resume_checkpoint`), checked before
    anything is written: it loads with weights_only=True (memory-mapped, so cheap) and was written by this
    command (its "camels" entry holds `counter`). None with --overwrite, which starts afresh."""
    from lmlab.training import resume_checkpoint

    path = resume_checkpoint(cfg, output_dir)
    if path is not None:
        ckpt = load_torch_file(path, "checkpoint", mmap=True)
        if not isinstance(ckpt, dict) or counter not in ckpt.get("camels", {}) or "state_dict" not in ckpt:
            raise LmlabError(
                f"{path} is not a checkpoint of camels {command}; pass --resume never to start afresh "
                "or choose another --output_dir"
            )
    return path


def check_vocab(tokenizer: Any, model: Any, what: str) -> None:
    """The tokenizer's ids must all have a row in the model's input embedding (else an index error mid-run)."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise LmlabError(
            f"the tokenizer has {len(tokenizer)} tokens but {what} embeds only {rows}; "
            "pass the tokenizer the model was trained with (--tokenizer_name)"
        )


def open_run_folder(cfg: Any, output_dir: str | os.PathLike) -> Path:
    """Start writing a training command's run folder, once every input is checked (a finished folder was refused
    at the start without --overwrite: `lmlab.io.refuse_finished`; an unfinished one resumes from last.ckpt).
    --overwrite removes the outputs of the earlier run first (lmlab's layout plus camels' validation history and
    samples), so the run starts afresh."""
    from lmlab.io import prepare_run_dir

    out = Path(output_dir)
    return prepare_run_dir(out, cfg.overwrite, also=[out / "val_history.json", out / "samples"])
