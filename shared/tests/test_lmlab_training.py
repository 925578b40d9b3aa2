"""lmlab.training and lmlab.device: the sampler stream, exact resume through Lightning, option checks."""

import dataclasses

import pytest
import pytorch_lightning as pl
import torch
from lmlab.device import (
    resolve_accelerator,
    resolve_attn_implementation,
    resolve_precision,
    set_threads,
    torch_device,
)
from lmlab.errors import LmlabError
from lmlab.logging import read_jsonl
from lmlab.training import StepSampler, TrainerOptions, build_trainer, rank_and_world_size, resume_checkpoint
from torch.utils.data import DataLoader, TensorDataset


def take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_sampler_covers_each_epoch_and_resumes_mid_stream():
    stream = take(StepSampler(5, seed=1), 15)
    for epoch in range(3):
        assert sorted(stream[epoch * 5 : (epoch + 1) * 5]) == list(range(5))
    assert stream[:5] != stream[5:10]  # a new permutation each epoch
    for start in (0, 3, 5, 7, 12):
        assert take(StepSampler(5, seed=1, start=start), 15 - start) == stream[start:]
    assert take(StepSampler(4, shuffle=False), 6) == [0, 1, 2, 3, 0, 1]


def test_rank_and_world_size_follow_torch_distributed(tmp_path):
    assert rank_and_world_size() == (0, 1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        assert rank_and_world_size() == (0, 1)
        sampler = StepSampler(4, rank=None, world_size=None)
        assert (sampler.rank, sampler.world_size) == (0, 1)
    finally:
        torch.distributed.destroy_process_group()


def test_sampler_shards_by_rank_and_resumes_per_rank():
    stream = take(StepSampler(6, seed=2), 12)
    r0, r1 = (
        take(StepSampler(6, seed=2, rank=0, world_size=2), 6),
        take(StepSampler(6, seed=2, rank=1, world_size=2), 6),
    )
    assert r0 == stream[0::2] and r1 == stream[1::2]
    assert take(StepSampler(6, seed=2, start=2, rank=1, world_size=2), 4) == r1[2:]
    with pytest.raises(LmlabError, match="empty"):
        StepSampler(0)


class Toy(pl.LightningModule):
    """A linear regression whose every step depends on the exact samples seen, so any data or optimiser
    state lost at resume changes the final weights."""

    def __init__(self, data, batch_size=4):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.data, self.batch_size, self.samples_seen = data, batch_size, 0

    def training_step(self, batch, _):
        x, y = batch
        self.samples_seen += x.shape[0]
        loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, ckpt):
        ckpt["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, ckpt):
        self.samples_seen = ckpt["samples_seen"]

    def train_dataloader(self):
        return DataLoader(
            self.data,
            batch_size=self.batch_size,
            sampler=StepSampler(len(self.data), seed=0, start=self.samples_seen),
        )


def _train(out, max_steps, data, resume="auto"):
    torch.manual_seed(0)
    opts = TrainerOptions(
        output_dir=str(out),
        device="cpu",
        max_steps=max_steps,
        checkpoint_every_n_steps=2,
        log_every_n_steps=1,
        progress_bar=False,
        logger="none",
        resume=resume,
    )
    module = Toy(data)
    trainer = build_trainer(opts, use_distributed_sampler=False)
    trainer.fit(module, ckpt_path=resume_checkpoint(opts), weights_only=True)
    return module, trainer


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(10, 3, generator=g), torch.randn(10, generator=g))
    full, _ = _train(tmp_path / "full", 7, data)
    _train(tmp_path / "part", 4, data)  # "interrupted" after 4 steps: checkpoint at step 4
    resumed, trainer = _train(tmp_path / "part", 7, data)
    assert trainer.global_step == 7 and resumed.samples_seen == full.samples_seen == 28
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    steps = [row["step"] for row in read_jsonl(tmp_path / "part" / "metrics.jsonl")]
    assert steps == sorted(steps) and len(steps) == 7  # history kept across the interruption
    assert (tmp_path / "part" / "checkpoints" / "last.ckpt").is_file()
    # a run that ends between two periodic saves still leaves its last step in last.ckpt
    _train(tmp_path / "odd", 5, data)
    ckpt = torch.load(tmp_path / "odd" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["samples_seen"] == 20
    # resume=never starts over
    fresh, trainer = _train(tmp_path / "part", 2, data, resume="never")
    assert trainer.global_step == 2


def test_resume_checkpoint_choices(tmp_path):
    opts = TrainerOptions(output_dir=str(tmp_path))
    assert resume_checkpoint(opts) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    assert resume_checkpoint(opts).endswith("last.ckpt")
    assert resume_checkpoint(dataclasses.replace(opts, resume="never")) is None
    with pytest.raises(LmlabError, match="no such checkpoint"):
        resume_checkpoint(dataclasses.replace(opts, resume=str(tmp_path / "x.ckpt")))
    assert resume_checkpoint(dataclasses.replace(opts, overwrite=True)) is None  # --overwrite starts afresh
    assert resume_checkpoint(opts).endswith("last.ckpt")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_steps": 0}, "--max_steps"),
        ({"logger": "mlflow"}, "--logger"),
        ({"strategy": "horovod"}, "--strategy"),
        ({"val_check_interval": 0}, "--val_check_interval"),
    ],
)
def test_trainer_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainerOptions(**kwargs)


def test_build_trainer_loggers_and_cpu_guards(tmp_path):
    trainer = build_trainer(
        TrainerOptions(output_dir=str(tmp_path), device="cpu", logger="tensorboard", max_steps=3)
    )
    assert [type(lg).__name__ for lg in trainer.loggers] == ["JsonlLogger", "TensorBoardLogger"]
    assert trainer.max_steps == 3 and trainer.precision == "32-true"
    with pytest.raises(LmlabError, match="fsdp needs GPUs"):
        build_trainer(TrainerOptions(output_dir=str(tmp_path), device="cpu", strategy="fsdp"))


def test_missing_logger_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(
        LmlabError, match=r"--logger wandb needs the wandb package: pip install 'lmlab\[wandb\]'"
    ):
        build_trainer(TrainerOptions(output_dir=str(tmp_path), device="cpu", logger="wandb"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_device_choices_on_cpu():
    assert resolve_accelerator("auto") == "cpu" and resolve_accelerator("cpu") == "cpu"
    assert torch_device("auto") == torch.device("cpu")
    with pytest.raises(LmlabError, match="no CUDA GPU"):
        resolve_accelerator("cuda")
    with pytest.raises(LmlabError, match="device must be one of"):
        resolve_accelerator("tpu")
    assert resolve_precision("auto", "cpu") == "32-true" and resolve_precision("32", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    with pytest.raises(LmlabError, match="fp16 precision needs a GPU"):
        resolve_precision("16-mixed", "cpu")
    with pytest.raises(LmlabError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")
    assert resolve_attn_implementation("sdpa") == "sdpa" and resolve_attn_implementation("eager") == "eager"
    with pytest.raises(LmlabError, match="must be one of"):
        resolve_attn_implementation("flash3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_flash_attention_errors_are_clear_without_cuda(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in ("flash_attn", "xformers") else real(name)
    )
    with pytest.raises(LmlabError, match="needs the flash_attn package"):
        resolve_attn_implementation("flash_attention_2", "cpu")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    with pytest.raises(LmlabError, match="only on a CUDA GPU"):
        resolve_attn_implementation("xformers", "cpu")


def test_threads():
    before = torch.get_num_threads()
    assert set_threads(None) == before
    assert set_threads(1) == 1
    with pytest.raises(LmlabError, match="at least 1"):
        set_threads(0)
    torch.set_num_threads(before)


@pytest.mark.gpu
def test_gpu_choices():
    assert resolve_accelerator("cuda") == "gpu"
    assert resolve_precision("auto", "gpu") in ("bf16-mixed", "32-true")


def test_param_groups_skip_decay_on_biases_and_norms_and_leave_out_frozen():
    from lmlab.training import param_groups

    class RMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), RMSNorm(), torch.nn.Linear(4, 4)
    )
    model[3].weight.requires_grad_(False)
    model.append(torch.nn.Linear(4, 4, bias=False))
    model[4].weight = model[0].weight  # tied
    decay, skip = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and skip["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model[0].weight)]
    expected = [model[0].bias, model[1].weight, model[1].bias, model[2].weight, model[3].bias]
    assert [id(p) for p in skip["params"]] == [id(p) for p in expected]
    (only,) = param_groups(model, 0.1, params=[model[3].bias])
    assert only["weight_decay"] == 0.0 and only["params"] == [model[3].bias]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step_equals_eager(backend, monkeypatch):
    from lmlab.training import compile_module

    monkeypatch.setenv("LMLAB_COMPILE_BACKEND", backend)

    def step(compiled: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
        keys = list(model.state_dict())
        compile_module(model, compiled)
        assert list(model.state_dict()) == keys  # checkpoints of compiled and eager runs are interchangeable
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(2):
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        return loss.detach(), [p.detach().clone() for p in model.parameters()]

    (eager_loss, eager), (compiled_loss, compiled) = step(False), step(True)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
