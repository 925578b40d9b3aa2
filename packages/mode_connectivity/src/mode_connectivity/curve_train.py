"""`curve`: train the control points of a Bezier/polychain curve between two fixed endpoints on Lightning,
then evaluate along t (spec §9).

Each update draws t ~ U(0,1) from a seeded generator (1 sample per batch for delta tuning, 3 with gradients
accumulated for the full model), computes the task loss at phi(t) with `functional_call` and updates only the
control points (Adafactor, constant lr, no clipping). Every `--valid_interval` updates the mean dev metric at
`--valid_t` picks `checkpoint-best` (control points). Afterwards dev/test are evaluated on the t grid with the
best control points written in place, and the point at the best dev t is exported as `model/`. Resumes bit-exactly: the t generator state and the sampler position are in
the Lightning checkpoint, answer picks are keyed on the stream position and dropout on the micro-batch (lmlab's
ExactResume). A non-finite loss at any sampled t stops the run naming the step and the t. Every input is read
and checked before anything is written.

Fixes relative to the reference: the curve trainers imported modules that did not exist and the full-model
script lacked --do_train; flattening by insertion order with hard-coded tensor counts is replaced by names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.callbacks import check_finite
from lmlab.config import config_to_dict, save_config
from lmlab.errors import LmlabError
from lmlab.io import finish_run, is_done
from lmlab.logging import get_logger
from lmlab.seed import seed_everything
from lmlab.training import build_trainer, compile_module, resume_checkpoint

from mode_connectivity.curves import Curve, CurveSweep, curve_loss
from mode_connectivity.data import EncodedSplit, TextTaskOptions, load_split, train_loader
from mode_connectivity.interpolate import EvalContext, load_endpoint, path_report, write_path_outputs
from mode_connectivity.models import (
    build_for_method,
    check_same_keys,
    clear_finished_run,
    delta_state,
    export_model,
)
from mode_connectivity.sweep import interpolation_grid

log = get_logger("mode-connectivity")


class CurveModule(pl.LightningModule):
    def __init__(
        self, cfg, model, curve: Curve, train_split: EncodedSplit, pad_id: int, checkpoint_dir: Path
    ):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.cfg, self.model, self.curve = cfg, compile_module(model, cfg.compile), curve
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.train_split, self.pad_id = train_split, pad_id
        self.t_gen = torch.Generator().manual_seed(cfg.seed)
        self.samples_seen = 0
        self.best = -float("inf")
        self.n_t = cfg.t_samples or (3 if cfg.tune_method == "model" else 1)

    def training_step(self, batch, batch_idx):
        self.samples_seen += batch["input_ids"].shape[0]
        total, terms = 0.0, {}
        for _ in range(self.n_t):
            t = float(torch.rand(1, generator=self.t_gen))
            loss = curve_loss(self.model, self.curve, t, batch) / self.n_t
            terms[f"loss at t={t:.4f}"] = loss
            total = total + loss
        check_finite(self.global_step + 1, terms, self.checkpoint_dir)
        self.log("train_loss", total, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return total

    def configure_optimizers(self):
        from transformers.optimization import Adafactor

        return Adafactor(
            self.curve.parameters(),
            lr=self.cfg.learning_rate_list[0],
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )

    def train_dataloader(self):
        return train_loader(
            self.train_split, self.cfg.seed, self.samples_seen, self.cfg.bsz_list[0], self.pad_id
        )

    def on_save_checkpoint(self, checkpoint):
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["t_gen_state"] = self.t_gen.get_state()
        checkpoint["best"] = self.best

    def on_load_checkpoint(self, checkpoint):
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
        if "t_gen_state" in checkpoint:
            self.t_gen.set_state(checkpoint["t_gen_state"])
        self.best = float(checkpoint.get("best", -float("inf")))


def save_control_points(path: Path, curve: Curve, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"bend{i}.{k}": v.detach().cpu().contiguous()
        for i, pts in enumerate(curve.control_points())
        for k, v in pts.items()
    }
    save_file(tensors, str(path / "weights.safetensors"), metadata={"kind": "curve"})
    (path / "meta.json").write_text(json.dumps({"kind": "curve", **meta}, indent=1, default=str))


def load_control_points(path: Path, curve: Curve) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "weights.safetensors"))
    points = [{k: tensors[f"bend{i}.{k}"] for k in curve.names} for i in range(curve.n_bends)]
    curve.load_control_points(points)


class CurveValidation(pl.Callback):
    def __init__(self, cfg, ctx: EvalContext, sweep: CurveSweep, out_dir: Path):
        self.cfg, self.ctx, self.sweep, self.out_dir = cfg, ctx, sweep, out_dir
        self.last_step = 0

    def on_train_batch_end(self, trainer, module: CurveModule, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.last_step or step % self.cfg.valid_interval or not trainer.is_global_zero:
            return
        self.last_step = step
        scores = []
        for t in self.cfg.valid_t:
            self.sweep.set(t)
            scores.append(self.ctx.evaluate()["dev"].metric)
        mean = sum(scores) / len(scores)
        module.log("dev_metric_mean", mean, prog_bar=True)
        if mean >= module.best:
            module.best = mean
            save_control_points(
                self.out_dir / "checkpoint-best",
                module.curve,
                {"step": step, "dev_mean": mean, "valid_t": self.cfg.valid_t},
            )


def run_curve(cfg) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    p1, p2 = cfg.load_stage1_pet_path_list
    theta1, _ = load_endpoint(p1, cfg.tune_method)
    theta2, _ = load_endpoint(p2, cfg.tune_method)
    check_same_keys(theta1, theta2, p1, p2)
    model = build_for_method(cfg, seed=cfg.seed)
    targets = delta_state(model, cfg.tune_method)
    check_same_keys(targets, theta1, "the model", p1)
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve = Curve(theta1, theta2, cfg.bend_num, cfg.curve, cfg.curve_init, cfg.curve_init_std, gen)
    ctx = EvalContext.build(cfg, splits=("dev",), model=model)
    sweep = CurveSweep(curve, targets)
    opts = TextTaskOptions(
        cfg.max_input_length, cfg.max_output_length, cfg.do_lowercase, cfg.append_another_bos
    )
    train = None
    if cfg.do_train:
        train = EncodedSplit(load_split(cfg.task_dir, "train"), ctx.tokenizer, ctx.task_name, opts)
    if cfg.do_predict:
        load_split(cfg.task_dir, "test")  # a missing or malformed test split fails now, not after training
    if not cfg.do_train and not (out / "checkpoint-best").is_dir():
        raise LmlabError(f"{out} has no checkpoint-best; run `curve` with --do_train")
    if cfg.do_train and is_done(out) and not cfg.overwrite:
        raise LmlabError(
            f"{out} holds a finished curve; pass --overwrite true to train again or --do_train false to "
            "evaluate its checkpoint-best"
        )
    if cfg.do_train and is_done(out):
        clear_finished_run(out)  # --overwrite: train again from the start
    out.mkdir(parents=True, exist_ok=True)
    (out / "DONE").unlink(missing_ok=True)  # --do_train false: not finished until evaluated again
    save_config(cfg, out / "config.yaml")
    step = None
    if cfg.do_train:
        module = CurveModule(cfg, model, curve, train, ctx.tokenizer.pad_token_id, out / "checkpoints")
        callback = CurveValidation(cfg, ctx, sweep, out)
        trainer = build_trainer(cfg, out, callbacks=[callback], use_distributed_sampler=False)
        trainer.fit(module, ckpt_path=resume_checkpoint(cfg, out), weights_only=True)
        step = trainer.global_step
        if not (out / "checkpoint-best").is_dir():  # no validation ran: the last control points
            save_control_points(out / "checkpoint-best", curve, {"step": step, "args": config_to_dict(cfg)})
    device = next(model.parameters()).device
    load_control_points(out / "checkpoint-best", curve)
    curve.to(device)
    for k in theta1:  # the endpoints never change
        if not (
            torch.equal(curve.start[k].cpu(), theta1[k].float())
            and torch.equal(curve.end[k].cpu(), theta2[k].float())
        ):
            raise LmlabError(f"endpoint tensor {k} changed during curve training")
    ctx = EvalContext.build(cfg, model=model)
    grid = interpolation_grid(cfg.itpl_points)
    rows = []
    for t in grid:
        sweep.set(t)
        rows.append(ctx.evaluate())
    summary = write_path_outputs(
        out, grid, rows, ctx.task_name, ctx.metric, cfg.barrier_tol, "curve parameter t", best_row=True
    )
    if step is not None:
        summary["step"] = step
    best_t = summary["dev"]["best_x"] if "dev" in summary else 0.5
    summary["model_t"] = best_t
    sweep.set(best_t)
    which = "the best on dev" if "dev" in summary else "the middle (no dev split evaluated)"
    report = path_report("curve", summary, p1, p2) + (
        f"\nmodel/ is the point of the curve (best control points) at t={best_t}, {which}.\n"
    )
    finish_run(
        out,
        summary,
        report,
        export=lambda folder: export_model(
            folder, model, ctx.tokenizer, cfg.tune_method, {"curve_t": best_t, "args": config_to_dict(cfg)}
        ),
    )
    for split in ("dev", "test"):
        if split in summary:
            s = summary[split]
            print(
                f"{split}: curve perf_barrier {s['perf_barrier']:.4f}  loss_barrier {s['loss_barrier']:.4f}"
            )
    print(f"results in {out}")
    return {k: summary["dev"][k] for k in ("perf_barrier", "loss_barrier")} if "dev" in summary else {}
