"""`layer-mix` (optional; reference `tune_hps_singletask_layer_weight_find_finetune.py`): learn one logit w_g per
group of tensors (block, layer or single tensor) and use sigmoid(w_g) * theta1 + (1 - sigmoid(w_g)) * theta2
per group (note: the orientation is opposite to the interpolation coefficient a). Trained on Lightning with
`functional_call`; afterwards the learned mixture is written in place, evaluated on dev/test and exported
(model/; results.json holds the group weights and the scores). Resumes
bit-exactly like `train` (sampler position and answer picks keyed on the stream, dropout on the micro-batch);
every input is read and checked before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.config import save_config
from lmlab.io import finish_run, is_done, refuse_finished, results_report
from lmlab.training import build_trainer, compile_module, resume_checkpoint
from torch import nn

from mode_connectivity.data import EncodedSplit, TextTaskOptions, load_split, train_loader
from mode_connectivity.interpolate import EvalContext, load_endpoint
from mode_connectivity.models import (
    build_for_method,
    check_same_keys,
    clear_finished_run,
    delta_state,
    export_model,
)


def group_of(name: str, layer_filter: str) -> str:
    """block: `encoder.block.3`; layer: `encoder.block.3.layer.1` (a T5 sublayer); weight: the tensor name.
    Tensors outside the blocks (embeddings, final norms) form their own group."""
    if layer_filter == "weight":
        return name
    pattern = r"^(.*?block\.\d+)" if layer_filter == "block" else r"^(.*?block\.\d+\.layer\.\d+)"
    m = re.match(pattern, name)
    return m.group(1) if m else name


class Mixture(nn.Module):
    def __init__(self, theta1, theta2, layer_filter: str, init_std: float, generator: torch.Generator):
        super().__init__()
        check_same_keys(theta1, theta2, "endpoint 1", "endpoint 2")
        self.names = sorted(theta1)
        self.groups = sorted({group_of(k, layer_filter) for k in self.names})
        index = {g: i for i, g in enumerate(self.groups)}
        self.group_index = [index[group_of(k, layer_filter)] for k in self.names]
        self.logits = nn.Parameter(torch.randn(len(self.groups), generator=generator) * init_std)
        for j, k in enumerate(self.names):
            self.register_buffer(f"a{j}", theta1[k].detach().float().clone())
            self.register_buffer(f"b{j}", theta2[k].detach().float().clone())

    def point(self) -> dict[str, torch.Tensor]:
        w = torch.sigmoid(self.logits)
        return {
            k: w[g] * getattr(self, f"a{j}") + (1 - w[g]) * getattr(self, f"b{j}")
            for j, (k, g) in enumerate(zip(self.names, self.group_index, strict=True))
        }


class MixModule(pl.LightningModule):
    def __init__(self, cfg, model, mixture: Mixture, train_split: EncodedSplit, pad_id: int):
        super().__init__()
        self.cfg, self.model, self.mixture, self.train_split, self.pad_id = (
            cfg,
            compile_module(model, cfg.compile),
            mixture,
            train_split,
            pad_id,
        )
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.samples_seen = 0

    def training_step(self, batch, batch_idx):
        from torch.func import functional_call

        self.samples_seen += batch["input_ids"].shape[0]
        loss = functional_call(
            self.model, self.mixture.point(), args=(), kwargs=batch, tie_weights=True, strict=False
        ).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        from transformers.optimization import Adafactor

        return Adafactor(
            [self.mixture.logits],
            lr=self.cfg.learning_rate,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )

    def train_dataloader(self):
        return train_loader(self.train_split, self.cfg.seed, self.samples_seen, self.cfg.bsz, self.pad_id)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, checkpoint):
        self.samples_seen = int(checkpoint.get("samples_seen", 0))


def run_layer_mix(cfg) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    p1, p2 = cfg.load_stage1_pet_path_list
    theta1, _ = load_endpoint(p1, cfg.tune_method)
    theta2, _ = load_endpoint(p2, cfg.tune_method)
    model = build_for_method(cfg, seed=cfg.seed)
    targets = delta_state(model, cfg.tune_method)
    check_same_keys(targets, theta1, "the model", p1)
    mixture = Mixture(theta1, theta2, cfg.layer_filter, cfg.init_std, torch.Generator().manual_seed(cfg.seed))
    ctx = EvalContext.build(cfg, model=model)
    train = EncodedSplit(
        load_split(cfg.task_dir, "train"), ctx.tokenizer, ctx.task_name,
        TextTaskOptions(cfg.max_input_length, cfg.max_output_length, cfg.do_lowercase, cfg.append_another_bos),
    )  # fmt: skip
    refuse_finished(out, cfg.overwrite)
    if is_done(out):
        clear_finished_run(out)  # --overwrite: train again from the start
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    module = MixModule(cfg, model, mixture, train, ctx.tokenizer.pad_token_id)
    trainer = build_trainer(cfg, out, use_distributed_sampler=False)
    trainer.fit(module, ckpt_path=resume_checkpoint(cfg, out), weights_only=True)
    with torch.no_grad():
        for k, v in mixture.point().items():
            targets[k].copy_(v.to(targets[k].device, targets[k].dtype))
    results = ctx.evaluate()
    weights = torch.sigmoid(mixture.logits.detach().cpu()).tolist()
    summary = {
        "layer_filter": cfg.layer_filter,
        "weights_of_endpoint_1": dict(zip(mixture.groups, weights, strict=True)),
        **{f"{s}_performance": r.metric for s, r in results.items()},
        **{f"{s}_loss": r.loss for s, r in results.items()},
    }
    text = f"Learned mixture of `{p1}` (weight w) and `{p2}` (1 - w) per {cfg.layer_filter}; model/ is the mixture."
    finish_run(
        out,
        summary,
        results_report("mode-connectivity layer-mix", summary, text),
        export=lambda folder: export_model(
            folder, model, ctx.tokenizer, cfg.tune_method, {"layer_mix": summary["weights_of_endpoint_1"]}
        ),
    )
    print(
        " ".join(f"{s}: {ctx.metric} {r.metric:.4f} loss {r.loss:.4f}" for s, r in results.items())
        + f"; results in {out}"
    )
    return {k: v for k, v in summary.items() if isinstance(v, float)}
