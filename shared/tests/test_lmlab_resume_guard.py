"""Exact resume with dropout on, each step once in metrics.jsonl, and the non-finite guard (lmlab.callbacks)."""

import contextlib

import pytest
import pytorch_lightning as pl
import torch
from lmlab.callbacks import NonFiniteLossError, check_finite, seed_micro_batch
from lmlab.logging import read_jsonl
from lmlab.training import StepSampler, TrainerOptions, build_trainer, resume_checkpoint
from torch.utils.data import DataLoader, TensorDataset


class Killed(Exception):
    pass


class DropoutToy(pl.LightningModule):
    """An MLP with dropout, validated every 2 steps (validation draws from the global generator too)."""

    def __init__(self, data, kill_after=None, lr=0.05, poison_at=None):
        super().__init__()
        self.poison_at = poison_at
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
        self.data, self.samples_seen, self.kill_after, self.lr = data, 0, kill_after, lr

    def training_step(self, batch, _):
        x, y = batch
        self.samples_seen += x.shape[0]
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        if self.global_step == self.poison_at:
            loss = loss * float("nan")
        self.log("loss", loss)
        return loss

    def on_train_batch_end(self, *args):
        if self.kill_after is not None and self.global_step == self.kill_after:
            raise Killed  # stands for a SIGKILL two steps after the last checkpoint

    def validation_step(self, batch, _):
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]).squeeze(-1), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_save_checkpoint(self, ckpt):
        ckpt["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, ckpt):
        self.samples_seen = ckpt["samples_seen"]

    def train_dataloader(self):
        sampler = StepSampler(len(self.data), seed=0, start=self.samples_seen)
        return DataLoader(self.data, batch_size=4, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=5)


DATA = TensorDataset(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), torch.randn(10))


def _fit(out, kill_after=None, lr=0.05, max_steps=9, accumulate=1, poison_at=None):
    torch.manual_seed(0)
    opts = TrainerOptions(
        output_dir=str(out), device="cpu", max_steps=max_steps, checkpoint_every_n_steps=3, log_every_n_steps=1,
        progress_bar=False, logger="none", val_check_interval=2, accumulate_grad_batches=accumulate,
    )  # fmt: skip
    module = DropoutToy(DATA, kill_after, lr, poison_at)
    trainer = build_trainer(opts, use_distributed_sampler=False)
    with contextlib.suppress(Killed):
        trainer.fit(module, ckpt_path=resume_checkpoint(opts), weights_only=True)
    return module, trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_killed_run_resumes_bit_exactly_with_dropout(tmp_path, accumulate):
    full, full_trainer = _fit(tmp_path / "full", accumulate=accumulate)
    _fit(tmp_path / "part", kill_after=5, accumulate=accumulate)  # last checkpoint at step 3, killed after 5
    assert torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    resumed, trainer = _fit(tmp_path / "part", accumulate=accumulate)
    assert trainer.global_step == 9
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    state_a, state_b = full_trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict()
    for key, value in state_a["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, state_b["state"][key][name])
    full_rows = read_jsonl(tmp_path / "full/metrics.jsonl")
    part_rows = read_jsonl(tmp_path / "part/metrics.jsonl")
    assert part_rows == full_rows  # each step once, with the same values
    train_steps = [r["step"] for r in part_rows if "loss" in r]
    assert train_steps == list(range(9))


def test_micro_batch_seed_depends_on_seed_rank_and_number():
    draws = {}
    for key in [(1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0), (1, 0, 0)]:
        seed_micro_batch(*key)
        draws.setdefault(key, []).append(torch.rand(3))
    assert torch.equal(draws[(1, 0, 0)][0], draws[(1, 0, 0)][1])
    firsts = [d[0] for d in draws.values()]
    assert all(not torch.equal(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :])


def test_non_finite_loss_stops_before_anything_is_saved(tmp_path):
    with pytest.raises(
        NonFiniteLossError, match=r"^step 7: loss term 'loss' is nan.*last.ckpt\) is the resume"
    ):
        _fit(tmp_path, poison_at=6)  # the 7th step's loss is NaN; checkpoints at 3 and 6
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [
        "last.ckpt"
    ]  # each checkpoint stored once


def test_diverging_learning_rate_stops_with_one_line(tmp_path):
    with pytest.raises(
        NonFiniteLossError, match=r"^step \d+: (loss term 'loss'|the gradient norm) is (nan|inf)"
    ):
        _fit(tmp_path, lr=1e30, max_steps=30)


def test_check_finite_names_the_term():
    check_finite(3, {"ce": torch.tensor(1.0), "kl": 0.5})
    with pytest.raises(NonFiniteLossError, match=r"^step 7: loss term 'kl' is nan"):
        check_finite(7, {"ce": torch.tensor(1.0), "kl": torch.tensor([0.1, float("nan")])})
    with pytest.raises(NonFiniteLossError, match="'ce' is inf"):
        check_finite(1, {"ce": float("inf")})


def test_short_run_still_writes_its_final_metrics_and_no_noise(tmp_path, capfd, caplog, recwarn):
    torch.manual_seed(0)
    opts = TrainerOptions(
        output_dir=str(tmp_path),
        device="cpu",
        max_steps=3,
        log_every_n_steps=50,
        progress_bar=False,
        logger="none",
    )
    trainer = build_trainer(opts, use_distributed_sampler=False)
    trainer.fit(DropoutToy(DATA), weights_only=True)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2] and "loss" in rows[0]
    out = capfd.readouterr()
    assert "Tip" not in out.out + out.err + caplog.text
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
    # a second call after the run finished adds nothing
    trainer = build_trainer(opts, use_distributed_sampler=False)
    trainer.fit(DropoutToy(DATA), ckpt_path=resume_checkpoint(opts), weights_only=True)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2]


class Distil(DropoutToy):
    """A student trained against a frozen teacher that must stay in eval mode; both start in eval mode, as
    `from_pretrained` leaves them."""

    eval_modules = ("teacher", "hidden")

    def __init__(self, data):
        super().__init__(data)
        self.teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5))
        self.__dict__["hidden"] = torch.nn.Dropout(0.5)  # outside the module tree (not in checkpoints)
        self.eval()
        self.modes = None

    def on_train_batch_start(self, batch, idx):
        if self.modes is None:
            self.modes = {name: m.training for name, m in self.named_modules()}


def test_modules_train_in_train_mode_except_the_declared_frozen_ones(tmp_path, recwarn):
    opts = TrainerOptions(
        output_dir=str(tmp_path), device="cpu", max_steps=2, progress_bar=False, logger="none"
    )
    module = Distil(DATA)
    build_trainer(opts, use_distributed_sampler=False).fit(module, weights_only=True)
    assert module.modes[""] and module.modes["net"] and module.modes["net.1"]
    assert not module.modes["teacher"] and not module.modes["teacher.1"] and not module.hidden.training
    assert not [w for w in recwarn if "eval mode" in str(w.message)]


def test_a_checkpoint_with_non_finite_weights_is_never_saved(tmp_path):
    class Overflow(DropoutToy):
        def on_before_optimizer_step(self, optimizer):
            if self.global_step == 5:  # finite gradients, but the 6th update overflows a weight
                self.net[0].weight.grad.zero_()
                with torch.no_grad():
                    self.net[0].weight[0, 0] = float("inf")

    torch.manual_seed(0)
    opts = TrainerOptions(
        output_dir=str(tmp_path), device="cpu", max_steps=9, checkpoint_every_n_steps=3, progress_bar=False,
        logger="none",
    )  # fmt: skip
    with pytest.raises(
        NonFiniteLossError, match=r"^step 6: weight 'net.0.weight' is not finite, so it was not saved"
    ):
        build_trainer(opts, use_distributed_sampler=False).fit(Overflow(DATA), weights_only=True)
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_a_resumed_run_with_accumulation_does_not_save_mid_step(tmp_path):
    _fit(tmp_path, kill_after=5, accumulate=2)  # checkpoint at step 3 = 6 micro-batches, killed after step 5
    _fit(tmp_path, kill_after=4, accumulate=2)  # resumed at 3, killed after step 4: no save since step 3
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ExactResume")]
    assert ckpt["global_step"] == 3 and state["micro_batches"] == 6
