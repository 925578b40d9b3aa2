"""Tuned T5 models (full fine-tuning, the paper's adapter, LoRA and prefix tuning via peft) and their
checkpoints.

A checkpoint is a directory `<name>/` holding `weights.safetensors` (only the tensors of its kind: the
full state dict with tied copies stored once for `model`, the `adapter_` tensors for `adapter`, the `lora_`
tensors for `lora`, the `prompt_encoder.` tensors for `prefix`) and `meta.json` (kind, step, epoch, args,
model config, tied aliases). Reference-style `.pt` files (a dict with a `model` or `adapter` key) are accepted
on input, tensors only (`weights_only=True`).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from lmlab.errors import LmlabError
from torch import nn

from mode_connectivity.adapter import add_adapters, freeze_backbone
from mode_connectivity.config import TUNE_METHODS

# the name part that marks the delta tensors of each delta-tuning method in the model's state dict
DELTA_MARKERS = {"adapter": "adapter_", "lora": "lora_", "prefix": "prompt_encoder."}
WEIGHTS = "weights.safetensors"
META = "meta.json"
EXPORTED = "model.safetensors"  # the weights file of a save_pretrained export


def load_t5(
    model_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str = "auto",
):
    """A local T5 folder as `T5ForConditionalGeneration` with the resolved `--attn_implementation`; a folder
    holding another architecture is refused in one line."""
    from lmlab.device import resolve_accelerator, resolve_attn_implementation
    from transformers import AutoConfig, T5ForConditionalGeneration

    path = Path(model_dir)
    if not path.is_dir():
        raise LmlabError(
            f"--model {model_dir} is not a local model directory (run `mode-connectivity make-tiny`)"
        )
    if not (path / "config.json").is_file():
        raise LmlabError(f"--model {model_dir} has no config.json; give a save_pretrained T5 folder")
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type != "t5":
        raise LmlabError(
            f"--model {model_dir} is a {model_type!r} model, not a T5: this command needs a T5 folder "
            "(model_type t5, e.g. google/t5-v1_1-base); sequence classifiers such as RoBERTa go through glue-train"
        )
    attn = resolve_attn_implementation(attn_implementation, resolve_accelerator(device))
    return T5ForConditionalGeneration.from_pretrained(path, dtype=dtype, attn_implementation=attn)


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise LmlabError(f"--tokenizer_path {path} is not a local tokenizer directory")
    return AutoTokenizer.from_pretrained(path)


def prepare_model(
    model: nn.Module,
    tune_method: str,
    adapter_type: str = "houlsby",
    adapter_size: int = 12,
    r_mean: float = 0.0,
    r_std: float = 0.02,
    lora_r: int = 10,
    lora_alpha: int = 16,
    num_virtual_tokens: int = 20,
    prefix_projection: bool = False,
) -> nn.Module:
    """Attach the delta modules of `tune_method` and set requires_grad. Seed before calling (adapter init)."""
    if tune_method == "model":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if tune_method == "adapter":
        add_adapters(model, adapter_type, adapter_size, r_mean, r_std)
        freeze_backbone(model)
        return model
    if tune_method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=["q", "v"], lora_dropout=0.0)
        return get_peft_model(model, cfg)
    if tune_method == "prefix":
        return prefix_model(model, num_virtual_tokens, prefix_projection)
    raise LmlabError(f"--tune_method must be one of {', '.join(TUNE_METHODS)}, not {tune_method!r}")


def prefix_model(model: nn.Module, num_virtual_tokens: int, projection: bool) -> nn.Module:
    """peft prefix tuning (SEQ_2_SEQ_LM): `num_virtual_tokens` trainable keys/values prepended in every
    decoder self-attention layer (peft's seq2seq prefix; the encoder and cross-attention get none), optionally
    produced by peft's two-layer MLP (`projection`). Sized from the decoder: its layer count, heads x d_kv."""
    from peft import PeftModelForSeq2SeqLM, PrefixTuningConfig, TaskType

    class PrefixT5(PeftModelForSeq2SeqLM):
        """peft 0.21 hands the prefix to `generate` as `past_key_values`, which transformers 5 drops in
        favour of its own `cache`, and re-sends it at every step (generation ran without the prefix or without
        the earlier tokens). Here the prefix becomes the `cache` at the first step (each step without one)."""

        def prepare_inputs_for_generation(self, *args, **kwargs):
            inputs = self.base_model_prepare_inputs_for_generation(*args, **kwargs)
            cache = inputs.get("cache")
            if not inputs.get("use_cache", True) or cache is None or cache.get_seq_length() == 0:
                inputs["cache"] = self.get_prompt(inputs["decoder_input_ids"].shape[0])
            return inputs

    c = model.config
    cfg = PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=num_virtual_tokens,
        prefix_projection=projection,
        num_layers=c.num_decoder_layers,
        num_attention_heads=c.num_heads,
        token_dim=c.num_heads * c.d_kv,
    )
    return PrefixT5(model, cfg)


def unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with tied copies kept once (first name wins, e.g. `shared.weight`), and the aliases
    {duplicate name: kept name}. The returned tensors share storage with the live parameters."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_ptr: dict[tuple[int, tuple[int, ...]], str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in by_ptr:
            aliases[name] = by_ptr[key]
            continue
        by_ptr[key] = name
        kept[name] = t
    return kept, aliases


def delta_state(model: nn.Module, tune_method: str) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of `tune_method` holds and the sweep interpolates, as live storage views."""
    state, _ = unique_state(model)
    if tune_method == "model":
        return {k: v for k, v in state.items() if v.is_floating_point()}
    marker = DELTA_MARKERS[tune_method]
    out = {k: v for k, v in state.items() if marker in k}
    if not out:
        raise LmlabError(f"the model has no {marker} tensors for --tune_method {tune_method}")
    return out


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    tune_method: str,
    meta: dict[str, Any] | None = None,
    same_as: str | Path | None = None,
) -> Path:
    """Write `<path>/weights.safetensors` + `meta.json`. `same_as`: a checkpoint folder already holding these
    very weights (saved at the same step): the weights file becomes a relative link to it, stored once."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _, aliases = unique_state(model)
    info = {"kind": tune_method, "aliases": aliases if tune_method == "model" else {}, **(meta or {})}
    tmp = path / (WEIGHTS + ".tmp")
    tmp.unlink(missing_ok=True)
    if same_as is not None and (Path(same_as) / WEIGHTS).is_file():
        tmp.symlink_to(Path("..") / Path(same_as).name / WEIGHTS)
    else:
        tensors = {
            k: v.detach().to("cpu").contiguous().clone() for k, v in delta_state(model, tune_method).items()
        }
        save_file(tensors, str(tmp), metadata={"kind": tune_method})
    tmp.replace(path / WEIGHTS)
    (path / META).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    return path


def export_model(
    folder: str | Path, model: nn.Module, tokenizer, tune_method: str, meta: dict[str, Any]
) -> None:
    """A run's `model/`: a `save_pretrained` T5 that transformers' Auto classes load, its tokenizer, and the
    checkpoint `--load_PET_path` reads (meta.json; the delta in weights.safetensors). What the Auto classes get:
    the tuned model for `model`, the merged model for `lora`, the frozen backbone for `adapter` and `prefix`
    (the paper's adapter is not a transformers module: its tensors are in weights.safetensors). For `lora` and
    `prefix` `peft/` holds peft's own export (`PeftModel.from_pretrained(backbone, "model/peft")`)."""
    import copy

    folder = Path(folder)
    plain = model
    if tune_method in ("lora", "prefix"):
        model.save_pretrained(folder / "peft")
        plain = copy.deepcopy(model).merge_and_unload() if tune_method == "lora" else model.get_base_model()
    state = {k: v for k, v in plain.state_dict().items() if DELTA_MARKERS["adapter"] not in k}
    plain.save_pretrained(folder, state_dict=state)
    tokenizer.save_pretrained(folder)
    if tune_method == "model":  # the weights are model.safetensors itself (load_checkpoint reads it)
        _, aliases = unique_state(model)
        info = {"kind": tune_method, "aliases": aliases, **meta}
        (folder / META).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    else:
        save_checkpoint(folder, model, tune_method, meta)


def clear_finished_run(folder: Path) -> None:
    """`--overwrite` of a finished run: lmlab's shared layout plus the kept `checkpoint@N`/`checkpoint-*`."""
    from lmlab.io import clear_run

    clear_run(folder, also=[*folder.glob("checkpoint@*"), *folder.glob("checkpoint-*")])


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a checkpoint directory, a `.safetensors` file (meta from a `.json` beside it), or a
    reference-style `.pt` dict with a `model`/`adapter` key."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        meta = json.loads((path / META).read_text()) if (path / META).is_file() else {}
        if not (path / WEIGHTS).is_file() and meta.get("kind") == "model" and (path / EXPORTED).is_file():
            return load_file(str(path / EXPORTED)), meta  # a full-model run's model/ export
        if not (path / WEIGHTS).is_file():
            raise LmlabError(f"checkpoint {path} has no {WEIGHTS}")
        return load_file(str(path / WEIGHTS)), meta
    if not path.is_file():
        raise LmlabError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        return load_file(str(path)), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LmlabError(
            f"checkpoint {path} holds objects other than tensors, which are not loaded (they could run code); "
            "give a checkpoint directory, a .safetensors file or a .pt dict of tensors"
        ) from None
    if isinstance(obj, dict):
        for key in ("model", "adapter", "lora", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                kind = {"state_dict": "model"}.get(key, key)
                return dict(obj[key]), {"kind": kind}
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj), {}
    raise LmlabError(
        f"cannot read checkpoint {path}: expected a checkpoint directory, .safetensors or a .pt dict"
    )


def check_kind(meta: dict[str, Any], tune_method: str, path: str | Path) -> None:
    kind = meta.get("kind")
    if kind and kind != tune_method:
        raise LmlabError(f"checkpoint {path} is of kind {kind!r} but --tune_method is {tune_method!r}")


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], tune_method: str, path: str = "") -> None:
    """Copy a checkpoint's tensors into the live model (by name; the key set must match the model's)."""
    targets = delta_state(model, tune_method)
    check_same_keys(targets, tensors, "model", path or "checkpoint")
    with torch.no_grad():
        for k, v in targets.items():
            v.copy_(tensors[k].to(v.device, v.dtype))


def check_same_keys(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], name_a: str, name_b: str) -> None:
    if set(a) != set(b):
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        raise LmlabError(
            f"{name_a} and {name_b} have different tensors (only in first: {only_a}, only in second: {only_b}); "
            "checkpoints must come from the same method and model"
        )
    for k in a:
        if tuple(a[k].shape) != tuple(b[k].shape):
            raise LmlabError(
                f"{name_a} and {name_b} differ in the shape of {k}: {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
            )


def build_for_method(cfg, seed: int | None = None) -> nn.Module:
    """Load `cfg.model` and attach the delta modules; seeds torch first when `seed` is given."""
    model = load_t5(
        cfg.model,
        attn_implementation=getattr(cfg, "attn_implementation", "sdpa"),
        device=getattr(cfg, "device", "auto"),
    )
    if seed is not None:
        from lmlab.seed import seed_everything

        seed_everything(seed)
    return prepare_model(
        model,
        cfg.tune_method,
        adapter_type=cfg.adapter_type,
        adapter_size=cfg.adapter_size,
        r_mean=cfg.r_mean,
        r_std=cfg.r_std,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.prefix_projection,
    )
