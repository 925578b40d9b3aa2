"""Sites (block outputs) of stock Hugging Face models and the interchange intervention, with forward hooks.

A site k is the output of transformer block k (after its last LayerNorm). The intervention (spec section 3):
run the model on a source input, record the block-k output A_k; run it on the base input and, at the output of
block k, overwrite `out[i, p_j, D_k] = A_k[i, q_j, D_k]` where p_1 < ... < p_c are the True positions of the base
mask P[i] and q_1 < ... < q_c those of the source mask P'[i]. Writers are forward hooks registered with
`prepend=True`, so anything else hooked on the block (transformers 5 records `hidden_states` with hooks) sees the
written value. No modeling file is forked.

Two implementations with identical results:
* `interchange_forward_separate`: source pass, then intervened base pass (plus a plain base pass): the spec's
  definition, kept as the reference in tests.
* `interchange_forward` (fused, default): ONE pass over concat(base, source) (2B rows). Below the lowest
  intervened site both halves run as usual; at a site's output the source half is read and the intervened base
  replaces it, so above the site the rows are [plain base, intervened base]. Per-row tensors the model hands to
  each block (attention masks, position ids) are re-indexed by forward pre-hooks to follow the rows. Cost: 2B rows
  through the model instead of 3B (source, plain base, intervened base), and one kernel stream instead of three.
  With several sites in one model the source rows are kept (3B rows) from the lowest to the highest site.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from lmlab.errors import LmlabError
from torch import nn

Sites = dict[int, "torch.Tensor | None"]


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks: the one whose length is config.num_hidden_layers (first found)."""
    n = model_dims(model)[0]
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return module
    raise LmlabError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def model_dims(model: nn.Module) -> tuple[int, int, int]:
    """(n_layers, hidden_size, n_heads) from a transformers config (BERT, DistilBERT, RoBERTa, GPT-2 names)."""
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None) or cfg.n_layer
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None) or cfg.n_embd
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads", None) or cfg.n_head
    return int(n_layers), int(hidden), int(heads)


def _hidden_of(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def swap_positions(
    base: torch.Tensor,
    source: torch.Tensor,
    P: torch.Tensor,
    Ps: torch.Tensor,
    dims: torch.Tensor | None = None,
) -> torch.Tensor:
    """`base` with `base[i, p_j, dims] = source[i, q_j, dims]` (j-th True of P[i] and of Ps[i]); a new tensor.

    Vectorised, no host sync: the j-th source position of every row is found through cumulative counts.
    Gradients flow into both `base` (untouched entries) and `source` (swapped entries).
    """
    B, T, H = base.shape
    Ps = Ps[:, : source.shape[1]]
    Ts = source.shape[1]
    positions = torch.arange(Ts, device=base.device).expand(B, Ts)
    rank_s = torch.where(Ps, Ps.long().cumsum(1) - 1, Ts)  # rank of each source position, Ts = "unused"
    table = torch.zeros(B, Ts + 1, dtype=torch.long, device=base.device)
    table.scatter_(1, rank_s, positions)  # table[i, j] = q_j
    rank_b = (P.long().cumsum(1) - 1).clamp(0, Ts - 1)
    src_pos = table.gather(1, rank_b)  # B x T: source position paired with each base position
    gathered = source.gather(1, src_pos.unsqueeze(-1).expand(B, T, H)).to(base.dtype)
    mask = P.unsqueeze(-1) if dims is None else P.unsqueeze(-1) & dims.to(base.device)
    return torch.where(mask, gathered, base)


@contextlib.contextmanager
def _hooks() -> Iterator[list]:
    handles: list = []
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture_sites(
    model: nn.Module, sites: list[int], convention: str = "consistent"
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the value read at each site: the block output (`consistent`) or its input (`reference`: the
    output of block k-1 or the embedding output, the reference implementation's read site)."""
    blocks = find_blocks(model)
    store: dict[int, torch.Tensor] = {}
    with _hooks() as handles:
        for k in sites:
            if convention == "reference":

                def pre(mod, args, kwargs, k=k):
                    store[k] = args[0] if args else next(iter(kwargs.values()))

                handles.append(blocks[k].register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(mod, args, out, k=k):
                    store[k] = _hidden_of(out)

                handles.append(blocks[k].register_forward_hook(post))
        yield store


@contextlib.contextmanager
def capture_last_hidden(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of the last block (registered last, so it sees any intervention)."""
    store: dict[str, torch.Tensor] = {}
    with _hooks() as handles:
        handles.append(
            find_blocks(model)[-1].register_forward_hook(
                lambda m, a, o: store.__setitem__("h", _hidden_of(o))
            )
        )
        yield store


@contextlib.contextmanager
def intervene(
    model: nn.Module, sites: Sites, source_values: dict[int, torch.Tensor], P: torch.Tensor, Ps: torch.Tensor
) -> Iterator[list[int]]:
    """While active, the output of every block k in `sites` is overwritten with `source_values[k]` at the paired
    positions and dims. Yields a list that counts writer calls (one entry per write, the site)."""
    blocks = find_blocks(model)
    calls: list[int] = []
    with _hooks() as handles:
        for k, dims in sites.items():

            def write(mod, args, out, k=k, dims=dims):
                calls.append(k)
                return _with_hidden(out, swap_positions(_hidden_of(out), source_values[k], P, Ps, dims))

            handles.append(blocks[k].register_forward_hook(write, prepend=True))
        yield calls


@dataclass
class InterchangeOutput:
    logits: torch.Tensor  # plain pass on base, B x T x V
    hidden: torch.Tensor | None  # last block output, plain
    int_logits: torch.Tensor  # intervened pass on base
    int_hidden: torch.Tensor | None


def _run(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits


def interchange_forward_separate(
    model: nn.Module,
    base_ids: torch.Tensor,
    base_mask: torch.Tensor,
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    sites: Sites,
    P: torch.Tensor,
    Ps: torch.Tensor,
    convention: str = "consistent",
    detach_source: bool = False,
) -> InterchangeOutput:
    """Three passes: plain base, source (capturing the read sites), intervened base."""
    with capture_last_hidden(model) as last:
        logits = _run(model, base_ids, base_mask)
        hidden = last.get("h")
    with capture_sites(model, list(sites), convention) as store:
        _run(model, src_ids, src_mask)
    values = {k: (v.detach() if detach_source else v) for k, v in store.items()}
    with capture_last_hidden(model) as last, intervene(model, sites, values, P, Ps):
        int_logits = _run(model, base_ids, base_mask)
        int_hidden = last.get("h")
    return InterchangeOutput(logits, hidden, int_logits, int_hidden)


def interchange_forward(
    model: nn.Module,
    base_ids: torch.Tensor,
    base_mask: torch.Tensor,
    src_ids: torch.Tensor,
    src_mask: torch.Tensor,
    sites: Sites,
    P: torch.Tensor,
    Ps: torch.Tensor,
    convention: str = "consistent",
    detach_source: bool = False,
    counter: list | None = None,
) -> InterchangeOutput:
    """The fused single pass over concat(base, source); same results as `interchange_forward_separate`."""
    if base_ids.shape != src_ids.shape:
        raise LmlabError(
            f"base {tuple(base_ids.shape)} and source {tuple(src_ids.shape)} batches differ in shape"
        )
    B = base_ids.shape[0]
    dev = base_ids.device
    blocks = find_blocks(model)
    order = sorted(sites)
    lo, hi = order[0], order[-1]
    multi = len(order) > 1
    ar = torch.arange(B, device=dev)
    # rows (as indices into the original 2B batch) that enter block j
    torch.cat([ar, ar + B])
    rows_three = torch.cat([ar, ar + B, ar])
    rows_inter = torch.cat([ar, ar])

    def rows_entering(j: int) -> torch.Tensor | None:
        if j <= lo:
            return None
        if multi and j <= hi:
            return rows_three
        return rows_inter

    def remap(mod, args, kwargs, j):
        rows = rows_entering(j)
        if rows is None:
            return None
        new_args = [args[0]] + [
            a.index_select(0, rows)
            if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[0] == 2 * B
            else a
            for a in args[1:]
        ]
        new_kwargs = {
            key: (
                v.index_select(0, rows)
                if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == 2 * B
                else v
            )
            for key, v in kwargs.items()
        }
        return tuple(new_args), new_kwargs

    read_inputs: dict[int, torch.Tensor] = {}

    def read_pre(mod, args, kwargs, k):
        h = args[0] if args else next(iter(kwargs.values()))
        read_inputs[k] = h[B : 2 * B]

    def write(mod, args, out, k):
        if counter is not None:
            counter.append(k)
        h = _hidden_of(out)
        src = read_inputs[k] if convention == "reference" else h[B : 2 * B]
        if detach_source:
            src = src.detach()
        base_part = h[:B] if (k == lo) else h[2 * B :]
        swapped = swap_positions(base_part, src, P, Ps, sites[k])
        if multi and k != hi:
            new = torch.cat([h[: 2 * B], swapped])  # [base, source, intervened] until the highest site
        else:
            new = torch.cat([h[:B], swapped])
        return _with_hidden(out, new)

    ids = torch.cat([base_ids, src_ids])
    mask = torch.cat([base_mask, src_mask])
    last: dict[str, torch.Tensor] = {}
    with _hooks() as handles:
        for j in range(lo + 1, len(blocks)):
            handles.append(
                blocks[j].register_forward_pre_hook(
                    lambda m, a, kw, j=j: remap(m, a, kw, j), with_kwargs=True
                )
            )
        for k in order:
            if convention == "reference":
                handles.append(
                    blocks[k].register_forward_pre_hook(
                        lambda m, a, kw, k=k: read_pre(m, a, kw, k), with_kwargs=True
                    )
                )
            handles.append(
                blocks[k].register_forward_hook(lambda m, a, o, k=k: write(m, a, o, k), prepend=True)
            )
        handles.append(blocks[-1].register_forward_hook(lambda m, a, o: last.__setitem__("h", _hidden_of(o))))
        logits = _run(model, ids, mask)
    hidden = last["h"]
    return InterchangeOutput(logits[:B], hidden[:B], logits[B:], hidden[B:])


def plain_forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, want_hidden: bool = True):
    """(logits, last block output or None)."""
    if not want_hidden:
        return _run(model, ids, mask), None
    with capture_last_hidden(model) as last:
        logits = _run(model, ids, mask)
    return logits, last["h"]
