"""Data-parallel IRM-games (`invariant-lm train --devices N --strategy ddp`).

Every rank runs the same update index i, so the same environment e = i mod n, on its own rows of that
environment's global batch (`EnvironmentStreams` shards it). After backward, the gradients of exactly the
stepped parameters (body ∪ head e) are averaged across ranks, weighted by each rank's number of masked tokens:
the result is the gradient of the ensemble's mean cross-entropy over the whole global batch, i.e. what one
process with the global batch computes, up to float summation order. Then every rank clips and steps the same
gradients, so the replicas stay identical; heads that are not stepped have no gradient and are never touched.

Torch's `DistributedDataParallel` is not used: its reducer buckets every parameter that requires grad and, with
heads frozen and unfrozen between updates, needs `find_unused_parameters` (an autograd-graph walk per update)
to avoid hanging. `ManualSyncDDPStrategy` is Lightning's DDP strategy (process launch, process group, rank-0
checkpoints, `reduce`/`barrier`) without the DDP wrapper; `GradientAllReduce` does the one all-reduce.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy

_BUCKET_NUMEL = 1 << 24  # 16 M elements (64 MiB in fp32) per flattened all-reduce


class ManualSyncDDPStrategy(DDPStrategy):
    """Lightning's DDP strategy without the `DistributedDataParallel` wrapper: the module keeps its plain
    parameters (broadcast from rank 0 once, so every replica starts identical) and the training step
    all-reduces the gradients it steps itself (`GradientAllReduce`)."""

    strategy_name = "invariant_ddp"

    def configure_ddp(self) -> None:
        from pytorch_lightning.overrides.distributed import _sync_module_states

        _sync_module_states(self.model)


def _all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """In-place sum over ranks of `tensors`, flattened into buckets of one dtype and device each."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        start = 0
        while start < len(group):
            bucket, numel = [], 0
            while start < len(group) and (not bucket or numel + group[start].numel() <= _BUCKET_NUMEL):
                bucket.append(group[start])
                numel += group[start].numel()
                start += 1
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


class GradientAllReduce:
    """The `reduce` hook of `environment_update` for one update on one rank.

    `tokens` is this rank's number of attended tokens; after the call `self.tokens` is the global count."""

    def __init__(self, device: torch.device, tokens: int = 0) -> None:
        self.device = device
        self.tokens = tokens

    def __call__(self, params: list, loss: torch.Tensor, n_masked: int) -> tuple[torch.Tensor, int]:
        world = dist.get_world_size()
        has_grad = [p.grad is not None for p in params]
        # one small all-reduce: masked tokens, loss x masked tokens, tokens, and which parameters have a gradient
        head = torch.tensor([n_masked, float(loss) * n_masked, self.tokens], dtype=torch.float64)
        stats = torch.cat([head, torch.tensor(has_grad, dtype=torch.float64)]).to(self.device)
        dist.all_reduce(stats)
        stats = stats.cpu()
        total_masked = int(stats[0])
        self.tokens = int(stats[2])
        # token-weighted mean over ranks: the gradient of the mean loss over the whole global batch
        weight = n_masked / total_masked if total_masked > 0 else 1.0 / world
        grads = []
        for p, anywhere in zip(params, stats[3:].tolist(), strict=True):
            if anywhere == 0:
                continue  # no rank has a gradient: stays None, as on one process
            if p.grad is None:  # another rank has one: this rank contributes zeros
                p.grad = torch.zeros_like(p)
            else:
                p.grad.mul_(weight)
            grads.append(p.grad)
        _all_reduce_sum(grads)
        global_loss = stats[1] / total_masked if total_masked > 0 else loss.new_tensor(float(loss))
        return torch.as_tensor(global_loss, dtype=torch.float32), total_masked
