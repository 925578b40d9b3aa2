"""Two gloo ranks on CPU for test_headless_lm_gather.py: `python gather_worker.py OUT_DIR`.

Each rank saves `OUT_DIR/rank{r}.pt` with its losses and gradients; the test compares them with one process
computing the same losses on the union of the two micro-batches (the data comes from `gather_data`).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from headless_lm.losses import cwt_loss
from headless_lm.masking import MaskedBatch
from headless_lm.modeling import build_model
from headless_lm.objectives import causal_lm_loss, masked_lm_loss
from torch import nn
from torch.nn.parallel import DistributedDataParallel

WORLD = 2
SPLIT = 5  # loss-level rows: rank 0 keeps 5 positions, rank 1 keeps 3 (unequal sizes)
TEMPERATURE = 0.7


def gather_data() -> dict:
    """Everything both ranks and the single-process reference need; rank r takes its share of it."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=g)  # small vocabulary: ids repeat within and across ranks
    proj = torch.randn(4, 4, generator=g)
    hidden = torch.randn(8, 4, generator=g)
    ids = torch.tensor([0, 3, 3, 1, 5, 3, 0, 2])  # 3 and 0 occur on both ranks
    tokens = torch.randint(5, 20, (4, 9), generator=g)  # (2 rows per rank, T 9)
    attention = torch.ones(4, 9, dtype=torch.long)
    attention[1, 6:] = 0  # rank 0 keeps 8 + 5 = 13 shifted positions
    attention[2, 4:] = 0  # rank 1 keeps 3 + 8 = 11
    select = torch.zeros(4, 9, dtype=torch.bool)
    select[0, [1, 4]] = select[1, [2, 7]] = True  # rank 0: 4 MLM positions
    select[2, [0, 3, 5, 8]] = select[3, [1, 2, 6]] = True  # rank 1: 7
    corrupted = torch.where(select, torch.full_like(tokens, 1), tokens)
    labels = torch.where(select, tokens, torch.full_like(tokens, -100))
    return {
        "emb": emb,
        "proj": proj,
        "hidden": hidden,
        "ids": ids,
        "tokens": tokens,
        "attention": attention,
        "masking": MaskedBatch(corrupted, labels, select),
    }


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(kind, "tiny-gpt" if kind == "clm" else "tiny-bert", headless=True).eval()


class Objective(nn.Module):
    """The headless objective as a module, so DistributedDataParallel averages its gradients."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.model = kind, model(kind)

    def forward(self, tokens, attention=None, masking=None):
        if self.kind == "clm":
            return causal_lm_loss(self.model, tokens, attention_mask=attention, gather_negatives=True)
        return masked_lm_loss(self.model, tokens, masking=masking, gather_negatives=True)


def _loss_level(data: dict, rank: int, negatives: str, gather: bool) -> dict:
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    emb = data["emb"].clone().requires_grad_(True)
    proj = data["proj"].clone().requires_grad_(True)
    hidden = data["hidden"][rows].clone().requires_grad_(True)
    ids = data["ids"][rows]
    loss = cwt_loss(
        hidden @ proj,
        emb[ids],
        temperature=TEMPERATURE,
        negatives=negatives,
        target_ids=ids,
        gather_negatives=gather,
    )
    loss.backward()
    return {"loss": loss.detach(), "emb": emb.grad, "proj": proj.grad, "hidden": hidden.grad}


def _objective(data: dict, rank: int, kind: str) -> dict:
    rows = slice(2 * rank, 2 * rank + 2)
    ddp = DistributedDataParallel(Objective(kind))
    if kind == "clm":
        out = ddp(data["tokens"][rows], attention=data["attention"][rows])
    else:
        m = data["masking"]
        out = ddp(data["tokens"][rows], masking=MaskedBatch(m.input_ids[rows], m.labels[rows], m.mask[rows]))
    out.total_loss.backward()  # DDP averages the gradients over the two ranks
    grads = {name: p.grad.clone() for name, p in ddp.module.model.named_parameters() if p.grad is not None}
    return {"loss": out.total_loss.detach(), "num_predictions": out.num_predictions, "grads": grads}


def worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD)
    data = gather_data()
    result = {
        f"{negatives}_{gather}": _loss_level(data, rank, negatives, gather)
        for negatives in ("all", "unique")
        for gather in (True, False)
    }
    result["clm"] = _objective(data, rank, "clm")
    result["mlm"] = _objective(data, rank, "mlm")
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(worker, args=(sys.argv[1],), nprocs=WORLD)
