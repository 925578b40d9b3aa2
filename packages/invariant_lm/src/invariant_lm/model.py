"""`InvariantMLM`: any Hugging Face masked LM split into a shared body and n environment heads.

Prediction is the mean of the heads' pre-softmax logits (paper §3, reference `forward`). Differences from the
reference implementation (epfl-dlab/invariant-language-models):
- every head owns a private, untied decoder matrix (the reference accidentally ties the *first* head's decoder
  to the input embeddings); `head_decoder="shared"` is the opt-in cheap variant where all heads use the body's
  tied decoder and only transform + output bias are per environment;
- heads are registered submodules (so `--init_head` heads are the ones trained and saved);
- the ensemble is accumulated with `addmm` (no [n, B, T, V] tensor) and, with `sparse=True`, only at masked
  positions; inactive heads can run with frozen weights (no weight gradients) while still passing gradient
  to the body.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lmlab.errors import LmlabError
from torch import nn

FORMAT_VERSION = 1
INVARIANT_CONFIG = "invariant_config.json"
WEIGHTS_NAME = "model.safetensors"
HEADS_NAME = "heads.safetensors"
IGNORE_INDEX = -100


class Sequential3(nn.Module):
    """dense -> activation -> norm, with named parts (RoBERTa / DistilBERT head transforms)."""

    def __init__(self, dense: nn.Module, act: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.dense, self.act, self.norm = dense, act, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class _Gelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from transformers.activations import gelu

        return gelu(x)


class EnvHead(nn.Module):
    """One environment's MLM head: `transform` (H->H, may be identity), then `weight` (V x H, None when the
    decoder is shared with the body's input embeddings) and `bias` (V, may be None)."""

    def __init__(self, transform: nn.Module, weight: nn.Parameter | None, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.transform = transform
        self.weight = weight
        self.bias = bias


def _groups(keys) -> str:
    """The modules `keys` belong to, e.g. 'cls.predictions (6 weights)', for one-line messages."""
    counts: dict[str, int] = {}
    for key in sorted(keys):
        group = ".".join(key.split(".")[:-1][:2]) or key
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{g} ({n} weight{'s' if n > 1 else ''})" for g, n in counts.items())


def _not_the_load_report(record: logging.LogRecord) -> bool:
    """Drops transformers' LOAD REPORT table and its note on absent tied head weights ("This checkpoint seem
    corrupted"): `load_masked_lm` says what they mean (missing or unused weights) in one line."""
    message = str(record.getMessage())
    return " LOAD REPORT" not in message and not message.startswith("This checkpoint seem corrupted")


def load_masked_lm(name: str | Path, allow_random_head: bool = False, **from_pretrained_kwargs):
    """`AutoModelForMaskedLM.from_pretrained`, failures as one `LmlabError` line (a missing folder, a model
    without an MLM head, a pickled weights file that transformers' `torch.load(weights_only=True)` refuses).

    A checkpoint without the masked-LM head (e.g. a `BertModel` folder) is refused, naming the missing weights,
    unless `allow_random_head` (then one loud warning line: the heads start random). Checkpoint weights the
    masked LM does not use (BERT's pooler) are said in one line instead of transformers' LOAD REPORT table."""
    import pickle

    from transformers import AutoModelForMaskedLM

    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(_not_the_load_report)  # a filter: raising the level makes transformers warn elsewhere
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(name), output_loading_info=True, **from_pretrained_kwargs
        )
    except pickle.UnpicklingError as err:
        raise LmlabError(
            f"cannot load a masked LM from {name}: its weights file holds objects other than tensors and was "
            "refused unread (torch.load weights_only=True); give safetensors weights"
        ) from err
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot load a masked LM from {name}: {str(err).splitlines()[0]}") from err
    finally:
        report.removeFilter(_not_the_load_report)
    missing, unused = info["missing_keys"], info["unexpected_keys"]
    if missing:
        found = (getattr(model.config, "architectures", None) or ["a checkpoint"])[0]
        line = f"{name} is {found}, without the masked-LM head {type(model).__name__} needs: {_groups(missing)} missing"
        if not allow_random_head:
            raise LmlabError(
                f"{line}; give a masked-LM checkpoint, or pass --allow_random_head true (or --init_head) to "
                "train random heads"
            )
        print(
            f"[invariant-lm] WARNING: {line}; these weights are RANDOM: the heads start untrained",
            file=sys.stderr,
        )
    if unused:
        print(f"[invariant-lm] {name}: checkpoint weights not used: {_groups(unused)}", file=sys.stderr)
    return model


@dataclass
class InvariantMLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor
    head_logits: torch.Tensor | None = None
    n_masked: int | None = None


def _clone_param(p: torch.Tensor | None) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().clone())


def _split_base(base) -> tuple[nn.Module, nn.Module, nn.Linear, str, bool]:
    """(body, head transform, decoder Linear, adapter name, body_returns_features) of a HF masked LM."""
    mtype = getattr(base.config, "model_type", "")
    if mtype == "bert" and hasattr(base, "cls"):
        pred = base.cls.predictions
        return base.bert, pred.transform, pred.decoder, "bert", True
    if hasattr(base, "lm_head") and hasattr(base.lm_head, "layer_norm") and hasattr(base.lm_head, "dense"):
        head = base.lm_head  # roberta, xlm-roberta, camembert, ...
        return (
            base.base_model,
            Sequential3(head.dense, _Gelu(), head.layer_norm),
            head.decoder,
            "roberta",
            True,
        )
    if mtype == "distilbert":
        transform = Sequential3(base.vocab_transform, base.activation, base.vocab_layer_norm)
        return base.distilbert, transform, base.vocab_projector, "distilbert", True
    if mtype == "modernbert":
        return base.model, base.head, base.decoder, "modernbert", True
    out = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if isinstance(out, nn.Linear):
        # decoder-only heads: everything before the output projection becomes part of the body
        return base, nn.Identity(), out, "decoder-only", False
    raise LmlabError(
        f"model type {mtype!r} has no masked-LM head (get_output_embeddings() is not a Linear); "
        "give an AutoModelForMaskedLM checkpoint"
    )


def _init_module(module: nn.Module, std: float) -> None:
    """The HF BERT-family init: Linear weights N(0, std), biases 0, LayerNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_env_names(envs) -> list[str]:
    envs = list(envs)
    if not envs:
        raise LmlabError("no environment given; an invariant model needs at least one environment")
    if len(set(envs)) != len(envs):
        raise LmlabError(f"environment names must be unique, got {envs}")
    for e in envs:
        if not e or "." in e:
            raise LmlabError(f"environment name {e!r} must be non-empty and contain no '.'")
    return envs


class InvariantMLM(nn.Module):
    """Body + n environment heads; logits = mean over heads (see module docstring)."""

    def __init__(self, base_mlm, envs, head_decoder: str = "private", init_head: bool = False) -> None:
        super().__init__()
        if head_decoder not in ("private", "shared"):
            raise LmlabError(f"head_decoder must be 'private' or 'shared', got {head_decoder!r}")
        envs = _check_env_names(envs)
        body, transform, decoder, adapter, features = _split_base(base_mlm)
        self.config = base_mlm.config
        self.head_adapter = adapter
        self.head_decoder = head_decoder
        self.vocab_size = decoder.out_features
        decoder_w, decoder_b = decoder.weight, decoder.bias
        if adapter == "decoder-only":
            base_mlm.set_output_embeddings(nn.Identity())
            if head_decoder == "shared":
                raise LmlabError(
                    "--head_decoder shared needs a model with a known head transform; use private"
                )
        self.body = body
        self._body_kwargs = set(inspect.signature(body.forward).parameters)
        if head_decoder == "shared":
            emb = body.get_input_embeddings().weight
            if emb.shape != decoder_w.shape:
                raise LmlabError("--head_decoder shared needs a decoder tied to the input embeddings")
            # the shared decoder is the body's input embedding matrix (tied, as in the base MLM)
        std = float(getattr(self.config, "initializer_range", 0.02))
        heads = {}
        for env in envs:
            t = copy.deepcopy(transform)
            w = None if head_decoder == "shared" else _clone_param(decoder_w)
            b = _clone_param(decoder_b)
            head = EnvHead(t, w, b)
            if init_head:
                _init_module(head.transform, std)
                if head.weight is not None:
                    nn.init.normal_(head.weight, mean=0.0, std=std)
                if head.bias is not None:
                    nn.init.zeros_(head.bias)
            heads[env] = head
        self.heads = nn.ModuleDict(heads)
        self._features = features

    # ------------------------------------------------------------------ construction and IO
    @classmethod
    def from_base(
        cls,
        model_name_or_path_or_model,
        envs,
        head_decoder: str = "private",
        init_head: bool = False,
        init_base: bool = False,
        **from_pretrained_kwargs,
    ) -> InvariantMLM:
        """Wrap a masked LM (a loaded model, a local folder or a hub name): every head a copy of its MLM head
        (or HF-initialised with `init_head`); `init_base` re-initialises the body too (and implies init_head)."""
        from transformers import AutoModelForMaskedLM

        base = model_name_or_path_or_model
        if isinstance(base, str | Path):
            allow = bool(from_pretrained_kwargs.pop("allow_random_head", False)) or init_head or init_base
            base = load_masked_lm(base, allow_random_head=allow, **from_pretrained_kwargs)
        if init_base:
            base = AutoModelForMaskedLM.from_config(base.config)
            init_head = True
        return cls(base, envs, head_decoder=head_decoder, init_head=init_head)

    @property
    def env_names(self) -> list[str]:
        return list(self.heads.keys())

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    def invariant_config(self, mode: str = "irm") -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "envs": self.env_names,
            "mode": mode,
            "head_adapter": self.head_adapter,
            "head_decoder": self.head_decoder,
            "base_model_type": getattr(self.config, "model_type", None),
        }

    def save_pretrained(self, directory: str | Path, mode: str = "irm", tokenizer=None) -> Path:
        """A folder that is both a standard Hugging Face model and the whole invariant model, each weight once:
        `config.json` + `model.safetensors` of a plain `AutoModelForMaskedLM` computing the ensemble when that is
        exact (`heads_foldable`: the heads' transforms are equal, so the mean of the heads is one head with the
        mean decoder), else of the body alone (`AutoModel`); `heads.safetensors` (`<env>.*`: every head);
        `invariant_config.json`; the tokenizer if given. A model with the decoder-only adapter (no separate
        head transform) keeps format 1: everything in `model.safetensors` (`body.*`, `heads.<env>.*`)."""
        from safetensors.torch import save_file, save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        inv = self.invariant_config(mode)
        if self.head_adapter == "decoder-only":
            self.config.save_pretrained(directory)
            save_model(self, str(directory / WEIGHTS_NAME))  # de-duplicates shared tensors
        else:
            inv["format_version"] = 2
            if heads_foldable(self):
                folded_mlm(self).save_pretrained(directory)
                inv["hf_export"] = "mlm"
            else:
                self.body.save_pretrained(directory)
                inv["hf_export"] = "body"
            heads = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
            save_file(heads, str(directory / HEADS_NAME))
        (directory / INVARIANT_CONFIG).write_text(json.dumps(inv, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> InvariantMLM:
        """Load a folder written by `save_pretrained` (CPU-only works); also format 1 (everything in
        `model.safetensors`) and a run folder whose model is in `model/`."""
        from safetensors.torch import load_file, load_model
        from transformers import AutoConfig, AutoModelForMaskedLM

        directory = Path(directory)
        if (
            not (directory / INVARIANT_CONFIG).is_file()
            and (directory / "model" / INVARIANT_CONFIG).is_file()
        ):
            directory = directory / "model"  # a run folder
        inv_path = directory / INVARIANT_CONFIG
        if not inv_path.is_file():
            raise LmlabError(f"{directory} has no {INVARIANT_CONFIG}; is it an invariant-lm output folder?")
        inv = json.loads(inv_path.read_text())
        version = inv.get("format_version")
        if version not in (1, 2):
            raise LmlabError(f"{inv_path}: unsupported format_version {version}")
        config = AutoConfig.from_pretrained(str(directory))
        base = AutoModelForMaskedLM.from_config(config)
        model = cls(base, inv["envs"], head_decoder=inv["head_decoder"])
        if version == 1:
            load_model(model, str(directory / WEIGHTS_NAME), device=str(map_location))
        else:
            state = load_file(str(directory / WEIGHTS_NAME))
            if inv["hf_export"] == "mlm":  # the body's weights under the masked LM's base-model prefix
                prefix = base.base_model_prefix + "."
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            model.body.load_state_dict(state)
            model.heads.load_state_dict(load_file(str(directory / HEADS_NAME)))
        model.saved_mode = inv.get("mode", "irm")
        return model.to(map_location)

    # ------------------------------------------------------------------ parameters
    def body_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.body.parameters()]

    def head_parameters(self, env: str) -> list[nn.Parameter]:
        return [p for p in self.heads[env].parameters()]

    def set_trainable_heads(self, envs) -> None:
        """Heads outside `envs` run with frozen weights: no weight gradients, gradient still flows to the body."""
        envs = set(envs)
        for name, head in self.heads.items():
            for p in head.parameters():
                p.requires_grad_(name in envs)

    def tie_weights(self, *args, **kwargs) -> None:  # never re-tie after wrapping (reference accident, §1.9)
        return None

    # ------------------------------------------------------------------ forward
    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self._body_kwargs:
            kwargs["token_type_ids"] = token_type_ids
        out = self.body(**kwargs)
        return out[0] if self._features else out.logits

    def _shared_weight(self) -> torch.Tensor:
        return self.body.get_input_embeddings().weight

    def head_logits(self, env: str, h: torch.Tensor) -> torch.Tensor:
        head = self.heads[env]
        w = head.weight if head.weight is not None else self._shared_weight()
        return F.linear(head.transform(h), w, head.bias)

    def ensemble_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(1/n) sum_e head_e(h), accumulated with addmm: at most two [*, V] tensors alive, none saved for
        backward."""
        shape = h.shape[:-1]
        h2 = h.reshape(-1, h.shape[-1])
        heads = list(self.heads.values())
        n = len(heads)
        biases = [hd.bias for hd in heads if hd.bias is not None]
        if n == 1:
            z = self.head_logits(self.env_names[0], h2)
            return z.reshape(*shape, z.shape[-1])
        bias = torch.stack(biases).mean(0) if biases else None
        if self.head_decoder == "shared":
            t = sum(hd.transform(h2) for hd in heads) / n
            z = F.linear(t, self._shared_weight(), bias)
        else:
            z = None
            for hd in heads:
                t = hd.transform(h2)
                if z is None:
                    start = bias if bias is not None else t.new_zeros(())
                    z = torch.addmm(start.to(t.dtype), t, hd.weight.t().to(t.dtype), alpha=1.0 / n)
                else:
                    z = torch.addmm(z, t, hd.weight.t().to(t.dtype), alpha=1.0 / n)
        return z.reshape(*shape, z.shape[-1])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sparse: bool | None = None,
        return_head_logits: bool = False,
        **unused,
    ) -> InvariantMLMOutput:
        """Ensemble logits and, with `labels`, the ensemble's MLM cross-entropy (mean over masked tokens).

        `sparse` (default: True when labels are given) evaluates the heads only at positions whose label is not
        -100; the logits are then [M, V] in row-major order of those positions.
        """
        h = self.encode(input_ids, attention_mask, token_type_ids)
        if sparse is None:
            sparse = labels is not None
        target = labels
        if sparse:
            if labels is None:
                raise LmlabError("sparse heads need labels (they select the masked positions)")
            sel = labels != IGNORE_INDEX
            h = h[sel]
            target = labels[sel]
        logits = self.ensemble_logits(h)
        loss = n_masked = None
        if labels is not None:
            flat_t = target.reshape(-1)
            n_masked = int((flat_t != IGNORE_INDEX).sum())
            flat_z = logits.reshape(-1, logits.shape[-1]).float()
            if n_masked == 0:
                loss = flat_z.sum() * 0.0
            else:
                loss = F.cross_entropy(flat_z, flat_t, ignore_index=IGNORE_INDEX)
        head_logits = None
        if return_head_logits:
            head_logits = torch.stack([self.head_logits(e, h) for e in self.env_names])
        return InvariantMLMOutput(loss=loss, logits=logits, head_logits=head_logits, n_masked=n_masked)


def heads_foldable(model: InvariantMLM) -> bool:
    """True when mean-of-logits equals one head exactly: every head's transform is identical (then
    mean_e(W_e t + b_e) = mean(W) t + mean(b))."""
    heads = list(model.heads.values())
    ref = heads[0].transform.state_dict()
    return all(all(torch.equal(v, h.transform.state_dict()[k]) for k, v in ref.items()) for h in heads[1:])


def folded_mlm(model: InvariantMLM):
    """A plain `AutoModelForMaskedLM` computing the ensemble's logits (needs `heads_foldable`)."""
    from transformers import AutoModelForMaskedLM

    if not heads_foldable(model):
        raise LmlabError(
            "the heads' transforms differ, so their mean is not one head; export with --body_only"
        )
    config = copy.deepcopy(model.config)
    if model.head_decoder == "private":
        config.tie_word_embeddings = False
    base = AutoModelForMaskedLM.from_config(config)
    body, transform, decoder, _, _ = _split_base(base)
    body.load_state_dict(model.body.state_dict())
    heads = list(model.heads.values())
    transform.load_state_dict(heads[0].transform.state_dict())
    with torch.no_grad():
        if model.head_decoder == "private":
            decoder.weight = torch.nn.Parameter(torch.stack([h.weight for h in heads]).mean(0))
        if heads[0].bias is not None:
            decoder.bias.copy_(torch.stack([h.bias for h in heads]).mean(0))
    return base
