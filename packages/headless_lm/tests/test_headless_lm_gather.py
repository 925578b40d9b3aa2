"""`gather_negatives`: on two gloo ranks (CPU), the mean of the ranks' losses and of their gradients equals
the single-process CWT loss on the union of the micro-batches, also with unequal kept-position counts; with
the flag off each rank keeps its local negatives (bit-identical to the single-process loss on its rows)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from headless_lm.config import GptConfig, MlmConfig
from headless_lm.losses import cwt_loss
from headless_lm.masking import MaskedBatch
from headless_lm.objectives import causal_lm_loss, masked_lm_loss
from headless_lm.train import HeadlessLMModule, _arch_dict, _task_dict
from lmlab.training import rank_and_world_size

WORKER = Path(__file__).with_name("gather_worker.py")
_spec = importlib.util.spec_from_file_location("gather_worker", WORKER)
gw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gw)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(gw.WORLD)]


def _mean(values):
    return torch.stack(list(values)).mean(0)


@pytest.mark.parametrize("negatives", ["all", "unique"])
@pytest.mark.slow  # the `ranks` fixture spawns two processes once (~15 s) for these tests
def test_gathered_loss_and_gradients_equal_union_loss(ranks, negatives):
    data = gw.gather_data()
    emb = data["emb"].clone().requires_grad_(True)
    proj = data["proj"].clone().requires_grad_(True)
    hidden = data["hidden"].clone().requires_grad_(True)
    union = cwt_loss(
        hidden @ proj,
        emb[data["ids"]],
        temperature=gw.TEMPERATURE,
        negatives=negatives,
        target_ids=data["ids"],
    )
    union.backward()
    got = [r[f"{negatives}_True"] for r in ranks]
    # rank 0 holds 5 rows, rank 1 holds 3: the loss is not the plain mean of the two local means
    torch.testing.assert_close(_mean(g["loss"] for g in got), union.detach())
    # DDP averages parameter gradients over the ranks
    torch.testing.assert_close(_mean(g["emb"] for g in got), emb.grad)
    torch.testing.assert_close(_mean(g["proj"] for g in got), proj.grad)
    # a rank's hidden-state gradient, divided by the world size as DDP's average does downstream
    local = torch.cat([g["hidden"] for g in got]) / gw.WORLD
    torch.testing.assert_close(local, hidden.grad)
    # the gathered loss really differs from the local-negatives one
    assert abs(got[0]["loss"].item() - ranks[0][f"{negatives}_False"]["loss"].item()) > 1e-3


@pytest.mark.parametrize("negatives", ["all", "unique"])
@pytest.mark.slow  # the `ranks` fixture spawns two processes once (~15 s) for these tests
def test_flag_off_keeps_local_negatives_under_ddp(ranks, negatives):
    data = gw.gather_data()
    for rank, rows in enumerate((slice(0, gw.SPLIT), slice(gw.SPLIT, None))):
        emb = data["emb"].clone().requires_grad_(True)
        ids = data["ids"][rows]
        loss = cwt_loss(
            data["hidden"][rows] @ data["proj"],
            emb[ids],
            temperature=gw.TEMPERATURE,
            negatives=negatives,
            target_ids=ids,
        )
        loss.backward()
        got = ranks[rank][f"{negatives}_False"]
        assert torch.equal(got["loss"], loss.detach())
        assert torch.equal(got["emb"], emb.grad)


def _union_objective(kind: str):
    data = gw.gather_data()
    model = gw.model(kind)
    if kind == "clm":
        out = causal_lm_loss(model, data["tokens"], attention_mask=data["attention"])
    else:
        out = masked_lm_loss(model, data["tokens"], masking=data["masking"])
    out.total_loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow  # the `ranks` fixture spawns two processes once (~15 s) for these tests
@pytest.mark.parametrize(("kind", "counts"), [("clm", (13, 11)), ("mlm", (4, 7))])
def test_objectives_under_ddp_equal_union_batch(ranks, kind, counts):
    union, grads = _union_objective(kind)
    got = [r[kind] for r in ranks]
    assert tuple(g["num_predictions"] for g in got) == counts  # unequal kept positions per rank
    torch.testing.assert_close(_mean(g["loss"] for g in got), union.total_loss.detach())
    assert got[0]["grads"].keys() == grads.keys()
    assert "embed_in.weight" in grads or "embeddings.word_embeddings.weight" in grads
    for name, grad in grads.items():
        for g in got:  # DDP already averaged: both ranks hold the union's gradient
            torch.testing.assert_close(g["grads"][name], grad, msg=name)


def test_flag_is_a_no_op_on_one_process():
    assert rank_and_world_size() == (0, 1)
    data = gw.gather_data()
    args = (data["hidden"] @ data["proj"], data["emb"][data["ids"]])
    for negatives in ("all", "unique"):
        kw = {"negatives": negatives, "target_ids": data["ids"]}
        assert torch.equal(cwt_loss(*args, gather_negatives=True, **kw), cwt_loss(*args, **kw))
    masking = data["masking"]
    model = gw.model("mlm")
    on = masked_lm_loss(model, data["tokens"], masking=masking, gather_negatives=True)
    off = masked_lm_loss(model, data["tokens"], masking=MaskedBatch(*vars(masking).values()))
    assert torch.equal(on.total_loss, off.total_loss)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_config_flag_and_module_wiring(kind, monkeypatch, capfd):
    config = GptConfig if kind == "clm" else MlmConfig
    assert config().gather_negatives is False
    with pytest.raises(ValueError, match="--gather_negatives"):
        config(gather_negatives=True, emb_loss_weight=0.0)
    sizes = {"model_max_seq_len": 32} if kind == "clm" else {"model_max_seq_len": 32, "max_seq_len": 32}
    cfg = config(gather_negatives=True, hf_path=f"tiny-{'gpt' if kind == 'clm' else 'bert'}", **sizes)
    module = HeadlessLMModule(kind, _arch_dict(cfg, kind, None), _task_dict(cfg), mask_token_id=1)
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs["gather_negatives"])
        raise _Stop

    monkeypatch.setattr(f"headless_lm.train.{'causal' if kind == 'clm' else 'masked'}_lm_loss", record)
    batch = gw.gather_data()["tokens"]
    for step in (module.validation_step, module.training_step):
        with pytest.raises(_Stop):
            step(batch, 0)
    assert seen == [False, True]  # gathered in training only; validation keeps the local loss
    monkeypatch.setattr(module, "_trainer", SimpleNamespace(world_size=1))
    module.on_fit_start()
    assert "--gather_negatives does nothing on one process" in capfd.readouterr().err
