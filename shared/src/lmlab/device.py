"""Accelerator, precision, attention implementation and thread settings, chosen the same way by every package."""

from __future__ import annotations

import importlib.util

import torch

from lmlab.errors import LmlabError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "xformers")


def resolve_accelerator(device: str = "auto") -> str:
    """Lightning's accelerator name for `device`: "gpu" when CUDA is there (or asked for), else "cpu".

    Asking for a GPU where there is none is an error rather than a silent fallback to the CPU.
    """
    if device not in ACCELERATORS:
        raise LmlabError(f"device must be one of {', '.join(ACCELERATORS)}, got {device!r}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise LmlabError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return "gpu"
    if device == "mps" and not torch.backends.mps.is_available():
        raise LmlabError("--device mps was asked for but MPS is not available; use --device cpu")
    return device


def torch_device(device: str = "auto") -> torch.device:
    """A `torch.device` for loops outside Lightning (benchmarks, evaluation)."""
    accelerator = resolve_accelerator(device)
    return torch.device({"gpu": "cuda", "cpu": "cpu", "mps": "mps"}[accelerator])


def resolve_precision(precision: str = "auto", accelerator: str = "cpu") -> str:
    """Lightning precision: "auto" gives bf16-mixed on a bf16-capable GPU and 32-true elsewhere."""
    if precision not in PRECISIONS:
        raise LmlabError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"
    if precision.startswith("16") and accelerator == "cpu":
        raise LmlabError("fp16 precision needs a GPU; use --precision bf16-mixed or 32-true on the CPU")
    return "32-true" if precision == "32" else precision


def resolve_attn_implementation(name: str = "sdpa", device: str | torch.device = "cpu") -> str:
    """The `attn_implementation` to pass to `from_pretrained`/`from_config`.

    `sdpa` (default) and `eager` work everywhere; `flash_attention_2` needs the flash-attn package and a CUDA
    device; `xformers` needs the xformers package and CUDA (and is used by the packages through their own
    attention hooks, so it is returned as is).
    """
    if name not in ATTN_IMPLEMENTATIONS:
        raise LmlabError(
            f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {name!r}"
        )
    if name in ("sdpa", "eager"):
        return name
    on_cuda = device == "gpu" or torch.device(device).type == "cuda"
    package = {"flash_attention_2": "flash_attn", "xformers": "xformers"}[name]
    if importlib.util.find_spec(package) is None:
        raise LmlabError(
            f"{name} needs the {package} package; install the [gpu] extra (make install-gpu) or use sdpa"
        )
    if not (on_cuda and torch.cuda.is_available()):
        raise LmlabError(f"{name} runs only on a CUDA GPU; use --attn_implementation sdpa on this device")
    return name


def set_threads(n: int | None) -> int:
    """Use `n` intra-op CPU threads (None: leave torch's default). Returns the number in use."""
    if n is not None:
        if n < 1:
            raise LmlabError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()
