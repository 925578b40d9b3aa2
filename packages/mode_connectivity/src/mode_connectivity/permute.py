"""The permuted twin of a T5 checkpoint: the same function with its hidden units relabelled (the reproduction's
sanity arm). A straight line between a model and its twin leaves the basin unless the task or model cannot show
a barrier at all, so it says whether the set-up can show one.

Three symmetries of T5 are used together, each exact:
- the residual width d_model: one permutation P for the whole model (RMSNorm scales each unit on its own and
  its root mean square does not depend on the order): embedding and lm_head columns, norm weights, the input
  columns of q/k/v/wi and the output rows of o/wo;
- attention heads: q/k/v rows and o columns move head by head; self-attention heads share the stack's
  relative position bias (computed in block 0, reused by every block), so one head order per stack, with the
  bias's columns; cross-attention has no bias, so each block gets its own;
- feed-forward units: per block, the rows of wi (wi_0 and wi_1 with the same order) and the columns of wo.
"""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(
    r"^(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention|DenseReluDense)\."
)


def permute_t5(
    tensors: dict[str, torch.Tensor], num_heads: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A new state (same keys) of the same function as `tensors` (a T5 state dict; tied copies may be absent)."""
    d_model = next(v.shape[1] for k, v in tensors.items() if k.endswith("SelfAttention.q.weight"))
    p = torch.randperm(d_model, generator=generator)
    perms: dict[tuple[str, ...], torch.Tensor] = {}

    def perm(key: tuple[str, ...], n: int) -> torch.Tensor:
        if key not in perms:
            perms[key] = torch.randperm(n, generator=generator)
        return perms[key]

    def heads(w: torch.Tensor, order: torch.Tensor, dim: int) -> torch.Tensor:
        per_head = w.shape[dim] // num_heads
        idx = (order[:, None] * per_head + torch.arange(per_head)).reshape(-1)
        return w.index_select(dim, idx)

    out = {}
    for name, w in tensors.items():
        m = _BLOCK.match(name)
        leaf = name.rsplit(".", 2)[-2]
        if m is None:  # embeddings, lm_head, layer norms
            out[name] = w[p] if w.dim() == 1 else w[:, p]
            continue
        stack, block, kind = m.groups()
        if kind == "DenseReluDense":
            f = perm((stack, block, "ff"), w.shape[0] if leaf.startswith("wi") else w.shape[1])
            out[name] = w[f][:, p] if leaf.startswith("wi") else w[p][:, f]
        else:
            h = perm((stack, "self") if kind == "SelfAttention" else (stack, block, "cross"), num_heads)
            if leaf == "relative_attention_bias":
                out[name] = w[:, h]
            elif leaf == "o":
                out[name] = heads(w[p], h, 1)
            else:  # q, k, v
                out[name] = heads(w[:, p], h, 0)
    return {k: v.contiguous() for k, v in out.items()}


def write_permuted_twin(src: str, dst: str, model_dir: str, seed: int) -> None:
    """Write `dst`, a full-model checkpoint (weights.safetensors + meta.json) that is `src` permuted."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file
    from transformers import AutoConfig

    from mode_connectivity.models import META, WEIGHTS, load_checkpoint

    tensors, meta = load_checkpoint(src)
    if meta.get("kind", "model") != "model":
        raise ValueError(f"the permuted twin needs a full-model checkpoint, {src} is {meta.get('kind')!r}")
    num_heads = AutoConfig.from_pretrained(model_dir).num_heads
    twin = permute_t5(tensors, num_heads, torch.Generator().manual_seed(seed))
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    save_file(twin, str(out / WEIGHTS), metadata={"kind": "model"})
    (out / META).write_text(
        json.dumps({**meta, "permuted_from": str(src), "permutation_seed": seed}, indent=1)
    )
