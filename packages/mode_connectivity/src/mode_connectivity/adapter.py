"""The paper's bottleneck adapter on a stock T5 (spec §4.2), attached with forward hooks (no forked modeling).

A(z) = z + act(z @ W_A) @ W_B applied to a sublayer's output before dropout and the residual add, i.e. to the
output of HF's `SelfAttention`, `EncDecAttention` (decoder) and `DenseReluDense` modules. houlsby: all three
(2*L_enc + 3*L_dec adapters), SiLU; pfeiffer: only after the feed-forward, ReLU. W_A (d, r), W_B (r, d), no
biases, both drawn from Normal(r_mean, r_std) (W_B is NOT zero: an untrained adapted model differs from the PLM).
Parameter names contain `adapter_` (`...SelfAttention.adapter.adapter_A`).
"""

from __future__ import annotations

import torch
from torch import nn

ADAPTER_TYPES = ("houlsby", "pfeiffer")


class Adapter(nn.Module):
    def __init__(self, d_model: int, r: int, act: str = "silu", r_mean: float = 0.0, r_std: float = 0.02):
        super().__init__()
        self.adapter_A = nn.Parameter(torch.empty(d_model, r))
        self.adapter_B = nn.Parameter(torch.empty(r, d_model))
        self.act = nn.SiLU() if act == "silu" else nn.ReLU()
        nn.init.normal_(self.adapter_A, mean=r_mean, std=r_std)
        nn.init.normal_(self.adapter_B, mean=r_mean, std=r_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.act(z @ self.adapter_A.to(z.dtype)) @ self.adapter_B.to(z.dtype)


def _hook(module: nn.Module, args, output):
    adapter = module.adapter
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def adapter_sites(model: nn.Module, adapter_type: str = "houlsby") -> list[nn.Module]:
    """The sublayer modules that get an adapter, in model order."""
    if adapter_type not in ADAPTER_TYPES:
        raise ValueError(f"--adapter_type must be one of {ADAPTER_TYPES}, not {adapter_type!r}")
    names = (
        ("DenseReluDense",)
        if adapter_type == "pfeiffer"
        else ("SelfAttention", "EncDecAttention", "DenseReluDense")
    )
    sites = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in names:
            sites.append(module)
    return sites


def add_adapters(
    model: nn.Module,
    adapter_type: str = "houlsby",
    adapter_size: int = 12,
    r_mean: float = 0.0,
    r_std: float = 0.02,
) -> list[Adapter]:
    """Attach adapters to `model` in place (registered as submodules, so they are in its state dict and move
    with `.to()`), in model order so that a seed fixes the init. Returns the adapters."""
    d_model = model.config.d_model
    act = "relu" if adapter_type == "pfeiffer" else "silu"
    adapters = []
    for site in adapter_sites(model, adapter_type):
        if hasattr(site, "adapter"):
            raise ValueError("the model already has adapters attached")
        site.adapter = Adapter(d_model, adapter_size, act, r_mean, r_std)
        site.register_forward_hook(_hook)
        adapters.append(site.adapter)
    return adapters


def is_adapter_name(name: str) -> bool:
    return "adapter_" in name


def freeze_backbone(model: nn.Module) -> None:
    """Only `adapter_` parameters trainable."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_name(name))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if is_adapter_name(k)}
