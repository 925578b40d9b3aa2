"""Lightning pre-training (gpt, mlm) and fine-tuning (ft-gpt) of headless / vanilla / mixed models.

Fixes of the reference trainers: the periodic "keep forever" checkpoints (periodic/) and the rolling last.ckpt
(checkpoints/) live in separate folders; weight decay skips biases and every normalisation layer found by
module type (the reference's "LayerNorm" substring never matched GPT-NeoX); step counts are ints; checkpoints
hold plain data (architecture dict, task config, tokenizer path) and load with weights_only=True; the data
position is part of the checkpoint so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.callbacks import check_finite
from lmlab.errors import LmlabError
from lmlab.logging import get_logger
from torch import nn
from torch.utils.data import DataLoader

from headless_lm.data import PackedRows, collate, load_packed, load_tokenizer
from headless_lm.modeling import (
    architecture_config,
    attention_implementation,
    backbone,
    build_model,
    lm_head,
)
from headless_lm.objectives import causal_lm_loss, masked_lm_loss

# ----------------------------------------------------------------------------------------------- optimisation


def no_decay(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    """Biases, 1-D parameters and every parameter of a normalisation module (LayerNorm, RMSNorm, any
    naming style) get no weight decay."""
    return name.endswith("bias") or param.ndim < 2 or "norm" in type(module).__name__.lower()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, skip, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (skip if no_decay(name, param, module) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 0 over `warmup` steps, then cosine to `min_ratio` at `total`,
    constant, or triangular/linear decay to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)


# ----------------------------------------------------------------------------------------------- module


class HeadlessLMModule(pl.LightningModule):
    """One module for every pre-training objective. Hyper-parameters are plain data (architecture config dict,
    task config dict, tokenizer path), so checkpoints load with `weights_only=True`."""

    def __init__(
        self,
        kind: str,
        arch: dict,
        task: dict,
        tokenizer: str | None = None,
        mask_token_id: int | None = None,
        special_token_ids: list[int] | None = None,
        mode: str = "pretrain",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.kind, self.task, self.mode = kind, task, mode
        self.ce_weight = float(task["lm_loss_weight"] if kind == "clm" else task["mlm_loss_weight"])
        self.emb_weight = float(task["emb_loss_weight"])
        attn = attention_implementation(
            task.get("accelerator", "sdpa"), "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.model = build_model(kind, arch, attn_implementation=attn, headless=self.ce_weight == 0)
        self.predictor = None
        if task.get("predictor") == "linear" and self.emb_weight != 0:
            dim = backbone(self.model).get_input_embeddings().weight.shape[1]
            self.predictor = nn.Linear(dim, dim, bias=False)
            nn.init.eye_(self.predictor.weight)
        if mode == "probe":
            head = lm_head(self.model)
            for p in self.model.parameters():
                p.requires_grad_(False)
            head.weight.requires_grad_(True)
        self.samples_seen = 0
        self.elapsed = 0.0
        self.checkpoint_dir: Path | None = None  # named by a non-finite loss error as the resume point
        self._t0: float | None = None
        self.train_rows: PackedRows | None = None
        self.valid_rows: PackedRows | None = None

    # --- loss
    def compute_loss(
        self,
        input_ids: torch.Tensor,
        generator: torch.Generator | None = None,
        compute_accuracy: bool = True,
        gather_negatives: bool = False,
    ):
        t = self.task
        if self.kind == "clm":
            return causal_lm_loss(
                self.model,
                input_ids,
                emb_loss_weight=self.emb_weight,
                lm_loss_weight=self.ce_weight,
                temperature=t["contrastive_temperature"],
                negatives=t["negatives"],
                predictor=self.predictor,
                compute_accuracy=compute_accuracy,
                gather_negatives=gather_negatives,
            )
        return masked_lm_loss(
            self.model,
            input_ids,
            emb_loss_weight=self.emb_weight,
            mlm_loss_weight=self.ce_weight,
            temperature=t["contrastive_temperature"],
            negatives=t["negatives"],
            predictor=self.predictor,
            compute_accuracy=compute_accuracy,
            gather_negatives=gather_negatives,
            generator=generator,
            mask_token_id=self.hparams.mask_token_id,
            special_token_ids=self.hparams.special_token_ids or (),
            mask_prob=t["mask_prob"],
            mask_token_prob=t["replace_prob"],
            random_token_prob=t["random_token_prob"],
            scheme=t["mask_scheme"],
            reference_label_bug=t["reference_label_bug"],
            full_head=t.get("mlm_vanilla_head", "full") == "full",
        )

    def _generator(self, salt: int) -> torch.Generator:
        # masking drawn per step from (seed, step, rank): deterministic and exact on resume
        seed = int(self.task["seed"]) * 1_000_003 + salt * 7919 + self.global_rank
        return torch.Generator(device=self.device).manual_seed(seed)

    def _log_out(self, prefix: str, out, batch_size: int) -> None:
        sync = prefix == "val"
        self.log(f"{prefix}/loss", out.total_loss, prog_bar=True, batch_size=batch_size, sync_dist=sync)
        if out.emb_loss is not None:
            self.log(f"{prefix}/emb_loss", out.emb_loss, batch_size=batch_size, sync_dist=sync)
        if out.lm_loss is not None:
            self.log(f"{prefix}/lm_loss", out.lm_loss, batch_size=batch_size, sync_dist=sync)
        if out.accuracy is not None:
            self.log(f"{prefix}/accuracy", out.accuracy, batch_size=batch_size, sync_dist=sync)

    def on_fit_start(self) -> None:
        if self.task.get("gather_negatives") and self.trainer.world_size == 1:
            get_logger("headless_lm").warning(
                "--gather_negatives does nothing on one process: the negatives are the local micro-batch"
            )

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.samples_seen += batch.shape[0]
        every = max(1, int(self.task.get("log_every_n_steps", 1)))
        # negatives gathered across ranks in training only: validation keeps the local, comparable loss
        gather = bool(self.task.get("gather_negatives", False))
        out = self.compute_loss(batch, self._generator(self.samples_seen), batch_idx % every == 0, gather)
        terms = {"emb_loss": out.emb_loss, "lm_loss": out.lm_loss, "loss": out.total_loss}
        check_finite(
            self.global_step + 1, {k: v for k, v in terms.items() if v is not None}, self.checkpoint_dir
        )
        self._log_out("train", out, batch.shape[0])
        now = time.perf_counter()
        if self._t0 is not None:
            self.elapsed += now - self._t0
        self._t0 = now
        self.log("train/elapsed_s", self.elapsed, batch_size=batch.shape[0])
        self.log("train/num_predictions", float(out.num_predictions), batch_size=batch.shape[0])
        return out.total_loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.compute_loss(batch, self._generator(-1 - batch_idx))
        self._log_out("val", out, batch.shape[0])
        if batch_idx == 0:
            for i, value in enumerate(anisotropy(self.model, batch)):
                self.log(f"optimization/avg_cosine_l{i}", value, batch_size=batch.shape[0], sync_dist=True)

    def configure_optimizers(self):
        t = self.task
        groups = param_groups(self, t["weight_decay"])
        fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(
            groups, lr=t["learning_rate"], betas=tuple(t["adam_betas"]), eps=t["adam_eps"], fused=fused
        )
        fn = partial(
            lr_factor,
            warmup=int(t["warmup_steps"]),
            total=int(t["max_steps"]),
            schedule=t["schedule_type"],
            min_ratio=float(t["min_lr_ratio"]),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- exact resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["elapsed_s"] = self.elapsed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
        self.elapsed = float(checkpoint.get("elapsed_s", 0.0))

    def train_dataloader(self) -> DataLoader:
        from lmlab.training import StepSampler

        sampler = StepSampler(len(self.train_rows), seed=int(self.task["seed"]), start=self.samples_seen)
        return DataLoader(
            self.train_rows,
            batch_size=int(self.task["gpu_bs"]),
            sampler=sampler,
            collate_fn=collate,
            num_workers=int(self.task.get("num_workers", 0)),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.valid_rows, batch_size=int(self.task["gpu_bs"]), collate_fn=collate, shuffle=False
        )


@torch.no_grad()
def anisotropy(model: nn.Module, input_ids: torch.Tensor, pairs: int = 50, seed: int = 0) -> list[float]:
    """Per layer, mean cosine similarity of `pairs` random pairs of token representations (reference probe
    `optimization/avg_cosine_l{i}`)."""
    hidden = backbone(model)(input_ids=input_ids, output_hidden_states=True, use_cache=False).hidden_states
    g = torch.Generator().manual_seed(seed)
    n = input_ids.numel()
    a = torch.randint(0, n, (pairs,), generator=g)
    b = torch.randint(0, n, (pairs,), generator=g)
    out = []
    for h in hidden:
        flat = h.reshape(n, -1).float()
        out.append(torch.nn.functional.cosine_similarity(flat[a], flat[b], dim=-1).mean().item())
    return out


# ----------------------------------------------------------------------------------------------- runners


def _output_dir(cfg) -> Path:
    if cfg.saved_ckpt_path:
        return Path(cfg.saved_ckpt_path) / (cfg.run_name or Path(cfg.output_dir).name)
    return Path(cfg.output_dir)


def _world_size(cfg) -> int:
    from lmlab.device import resolve_accelerator

    devices = cfg.devices
    if isinstance(devices, str):
        if devices == "auto":
            n = torch.cuda.device_count() if resolve_accelerator(cfg.device) == "gpu" else 1
        elif devices.startswith("[") or "," in devices:
            n = len([d for d in devices.strip("[]").split(",") if d.strip()])
        else:
            n = int(devices) if devices.lstrip("-").isdigit() else 1
            if n == -1:
                n = torch.cuda.device_count() or 1
    else:
        n = int(devices)
    return max(1, n) * cfg.num_nodes


def accumulation(cfg) -> int:
    """global_bs / (devices * nodes * gpu_bs), an error unless it is a positive integer."""
    if cfg.global_bs is None:
        return cfg.accumulate_grad_batches
    per_step = _world_size(cfg) * cfg.gpu_bs
    if cfg.global_bs % per_step:
        raise LmlabError(
            f"--global_bs {cfg.global_bs} is not a multiple of devices*nodes*gpu_bs = {per_step}; change one of them"
        )
    return cfg.global_bs // per_step


def _task_dict(cfg) -> dict:
    from lmlab.config import config_to_dict

    return json.loads(json.dumps(config_to_dict(cfg)))


def _arch_dict(cfg, kind: str, tokenizer) -> dict:
    arch = architecture_config(cfg.hf_path)
    if tokenizer is not None and (kind == "mlm" or len(tokenizer) > arch.vocab_size):
        arch.vocab_size = len(tokenizer)
    if hasattr(arch, "n_positions"):
        arch.n_positions = cfg.model_max_seq_len
    else:
        arch.max_position_embeddings = cfg.model_max_seq_len
    data = json.loads(arch.to_json_string(use_diff=False))
    data["model_type"] = arch.model_type
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data


def _mask_ids(cfg, tokenizer) -> tuple[int | None, list[int]]:
    if tokenizer is None:
        if cfg.mask_token_id is None:
            raise LmlabError("mlm needs --hf_tokenizer (with a mask token) or an explicit --mask_token_id")
        return cfg.mask_token_id, []
    specials = [int(i) for i in tokenizer.all_special_ids]
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id), specials
    if cfg.mask_token_id is None:
        raise LmlabError(
            "the tokenizer has no mask token; pass --mask_token_id (the reference used 1) or use a tokenizer with one"
        )
    warnings.warn(f"tokenizer has no mask token; using --mask_token_id {cfg.mask_token_id}", stacklevel=2)
    return cfg.mask_token_id, specials


def _data(cfg, kind: str, module: HeadlessLMModule) -> None:
    if cfg.dataset is None:
        raise LmlabError("--dataset is required: a folder written by `headless-lm preprocess`")
    if not cfg.tokenized:
        raise LmlabError("--tokenized false is not supported: run `headless-lm preprocess` on the text first")
    train, valid = load_packed(cfg.dataset, cfg.text_key, cfg.valid_fraction)
    length = cfg.max_seq_len if kind == "mlm" else None
    module.train_rows = PackedRows(train, cfg.text_key, length)
    module.valid_rows = PackedRows(valid, cfg.text_key, length)
    seq = module.train_rows.length
    if seq > cfg.model_max_seq_len:
        raise LmlabError(
            f"sequences of {seq} tokens are longer than the model's {cfg.model_max_seq_len} positions; "
            "raise --model_max_seq_len or preprocess with a smaller --max_seq_len"
        )
    vocab = backbone(module.model).get_input_embeddings().weight.shape[0]
    first = module.train_rows[0]
    if int(first.max()) >= vocab:
        raise LmlabError(
            f"token id {int(first.max())} is outside the model's vocabulary of {vocab}; wrong tokenizer?"
        )


def _fit(cfg, module: HeadlessLMModule, out_dir: Path, extra_callbacks=()) -> dict:
    from lmlab.config import save_config
    from lmlab.seed import seed_everything
    from lmlab.training import build_trainer, resume_checkpoint
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    seed_everything(cfg.seed)
    accum = accumulation(cfg)
    ckpt = resume_checkpoint(cfg, out_dir)
    if ckpt is not None:
        check_resumable(ckpt, module)
    val_every = cfg.val_every or max(1, cfg.max_steps // 10)
    periodic = ModelCheckpoint(
        dirpath=out_dir / "periodic",
        filename="step-{step}",
        every_n_train_steps=cfg.ckpt_every,
        save_top_k=-1,
    )
    callbacks = [periodic, *extra_callbacks]
    if cfg.logger != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = build_trainer(
        cfg,
        out_dir,
        callbacks=callbacks,
        gradient_clip_val=cfg.gradient_clip if cfg.gradient_clip > 0 else None,
        use_distributed_sampler=False,
        accumulate_grad_batches=accum,
        val_check_interval=val_every * accum,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
    )
    # every input is checked above: only now is the run folder written
    out_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        save_config(cfg, out_dir / "config.yaml")
    module.checkpoint_dir = out_dir / "checkpoints"
    trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    summary = {
        "output_dir": str(out_dir),
        "global_step": trainer.global_step,
        "accumulation": accum,
        **metrics,
    }
    if trainer.is_global_zero:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"[headless-lm] finished at step {trainer.global_step}; results in {out_dir}")
    return summary


def run_pretrain(cfg, kind: str, callbacks=()) -> dict:
    """Pre-train a `kind` (clm | mlm) model from a config; `callbacks` are extra Lightning callbacks."""
    out_dir = _output_dir(cfg)
    tokenizer = load_tokenizer(cfg.hf_tokenizer) if cfg.hf_tokenizer else None
    mask_id, specials = _mask_ids(cfg, tokenizer) if kind == "mlm" else (None, [])
    task = _task_dict(cfg)
    from lmlab.seed import seed_everything

    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    if kind == "clm":
        task.setdefault("mlm_loss_weight", 0.0)
    module = HeadlessLMModule(
        kind, _arch_dict(cfg, kind, tokenizer), task, cfg.hf_tokenizer, mask_id, specials
    )
    _data(cfg, kind, module)
    return _fit(cfg, module, out_dir, callbacks)


def run_gpt(cfg) -> dict:
    return run_pretrain(cfg, "clm")


def run_mlm(cfg) -> dict:
    return run_pretrain(cfg, "mlm")


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint of this package, loaded with weights_only=True (an LmlabError otherwise: a
    checkpoint holding anything but plain data is refused, never unpickled). Tensors are memory-mapped."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise LmlabError(f"cannot load checkpoint {path} ({type(err).__name__})") from None
    hp = ckpt.get("hyper_parameters") or {}
    if not {"kind", "arch", "task"} <= set(hp):
        raise LmlabError(f"{path} is not a headless-lm checkpoint (no kind/arch/task hyper-parameters)")
    return ckpt


def check_resumable(path: str | Path, module: HeadlessLMModule) -> None:
    """Refuse, before anything is written, a resume checkpoint that does not hold this run's model: another
    objective's head, another architecture or width (Lightning would fail half-way into `fit`)."""
    ckpt = load_checkpoint(path)
    theirs, ours = ckpt["state_dict"], module.state_dict()
    differ = sorted(set(theirs) ^ set(ours)) or [k for k in ours if theirs[k].shape != ours[k].shape]
    if ckpt["hyper_parameters"]["kind"] != module.kind or differ:
        raise LmlabError(
            f"cannot resume from {path}: it holds another model ({ckpt['hyper_parameters']['kind']}; first "
            f"difference {differ[0] if differ else 'the objective'}); give a new --output_dir or --resume never"
        )


def model_from_checkpoint(ckpt: dict) -> HeadlessLMModule:
    hp = dict(ckpt["hyper_parameters"])
    hp["task"] = {**hp["task"], "accelerator": "sdpa"}
    module = HeadlessLMModule(**hp)
    module.load_state_dict(ckpt["state_dict"])
    return module


def run_ft_gpt(cfg) -> dict:
    """Attach a head copied from E to a headless decoder checkpoint and train with next-token CE only."""
    from headless_lm.modeling import add_lm_head

    if not cfg.ckpt_path:
        raise LmlabError("--ckpt_path (the headless checkpoint to fine-tune) is required")
    source = load_checkpoint(cfg.ckpt_path)
    hp = source["hyper_parameters"]
    if hp["kind"] != "clm":
        raise LmlabError(f"{cfg.ckpt_path} is a {hp['kind']} checkpoint; ft-gpt needs a gpt (causal) one")
    out_dir = _output_dir(cfg)
    arch = {**hp["arch"], "tie_word_embeddings": False}
    tok_path = cfg.hf_tokenizer or hp.get("tokenizer")
    cfg = dataclasses.replace(
        cfg,
        hf_tokenizer=tok_path,
        model_max_seq_len=int(
            arch.get("max_position_embeddings") or arch.get("n_positions") or cfg.model_max_seq_len
        ),
    )
    task = _task_dict(cfg)
    module = HeadlessLMModule("clm", arch, task, tok_path, mode=cfg.mode)
    from lmlab.training import resume_checkpoint

    if resume_checkpoint(cfg, out_dir) is None:
        pretrained = model_from_checkpoint(source).model
        if lm_head(pretrained) is None:
            pretrained = add_lm_head(pretrained)
        module.model.load_state_dict(pretrained.state_dict())
    _data(cfg, "clm", module)
    return _fit(cfg, module, out_dir)
