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
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.callbacks import check_finite
from lmlab.errors import LmlabError
from lmlab.logging import get_logger
from lmlab.training import param_groups
from pytorch_lightning.callbacks import ModelCheckpoint
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


def lr_scheduler(optimizer, *, schedule: str, warmup: int, total: int, min_ratio: float = 0.0):
    """transformers' schedules: linear warm-up from 0 over `warmup` steps, then cosine to `min_ratio` of the peak
    at `total` (`cosine_with_min_lr`), constant, or triangular/linear decay to `min_ratio` (`polynomial` of
    power 1 ending at min_ratio x peak)."""
    from transformers import get_scheduler

    if schedule == "constant" or min_ratio == 1.0:
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup)
    kwargs = {"num_warmup_steps": warmup, "num_training_steps": total}
    if schedule == "cosine":
        return get_scheduler(
            "cosine_with_min_lr", optimizer, **kwargs, scheduler_specific_kwargs={"min_lr_rate": min_ratio}
        )
    lr_end = min_ratio * optimizer.defaults["lr"]
    return get_scheduler(
        "polynomial", optimizer, **kwargs, scheduler_specific_kwargs={"lr_end": lr_end, "power": 1.0}
    )


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
            task["attn_implementation"], "cuda" if torch.cuda.is_available() else "cpu"
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
        sched = lr_scheduler(
            opt,
            schedule=t["schedule_type"],
            warmup=int(t["warmup_steps"]),
            total=int(t["max_steps"]),
            min_ratio=float(t["min_lr_ratio"]),
        )
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
    return _plain_arch(arch)


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


class KeptCheckpoint(ModelCheckpoint):
    """The checkpoints kept forever (`periodic/step-N.ckpt` every `--ckpt_every` steps), except at the last step,
    which `checkpoints/last.ckpt` holds: each checkpoint is stored once."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step < (trainer.max_steps or 0):
            super().on_train_batch_end(trainer, *args)


def _fit(cfg, module: HeadlessLMModule, out_dir: Path, extra_callbacks=()) -> dict:
    from lmlab.config import save_config
    from lmlab.io import prepare_run_dir
    from lmlab.seed import seed_everything
    from lmlab.training import build_trainer, compile_module, resume_checkpoint
    from pytorch_lightning.callbacks import LearningRateMonitor

    seed_everything(cfg.seed)
    accum = cfg.accumulation()
    ckpt = resume_checkpoint(cfg, out_dir)
    if ckpt is not None:
        check_resumable(ckpt, module)
    # --val_check_interval counts micro-batches (Lightning's unit); the reference's --val_every optimizer steps
    val_batches = cfg.val_check_interval or (cfg.val_every or max(1, cfg.max_steps // 10)) * accum
    periodic = KeptCheckpoint(
        dirpath=out_dir / "periodic",
        filename="step-{step}",
        auto_insert_metric_name=False,
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
        val_check_interval=val_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
    )
    # every input is checked above: only now is the run folder written
    if trainer.is_global_zero:
        prepare_run_dir(out_dir, cfg.overwrite)
        save_config(cfg, out_dir / "config.yaml")
    module.checkpoint_dir = out_dir / "checkpoints"
    compile_module(module.model, cfg.compile)  # in place: checkpoint and export keys stay the eager ones
    trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    results = {
        "output_dir": str(out_dir),
        "global_step": trainer.global_step,
        "accumulation": accum,
        **metrics,
    }
    if trainer.is_global_zero:
        _finish(cfg, module, out_dir, results)
    return results


def _finish(cfg, module: HeadlessLMModule, out_dir: Path, results: dict) -> None:
    """results.json, report.md, model/ (the `export` command's folder for this model), then DONE."""
    from lmlab.io import finish_run, results_report

    from headless_lm.export import export_module
    from headless_lm.modeling import is_headless

    mode = "mlm" if module.kind == "mlm" else "add_head" if is_headless(module.model) else "lm"
    objective = (
        "headless (CWT)" if module.ce_weight == 0 else "vanilla (CE)" if module.emb_weight == 0 else "mixed"
    )
    text = (
        f"{module.kind} {module.mode} run, {objective}, {results['global_step']} optimizer steps of "
        f"{results['accumulation']} micro-batch(es). `model/` is the `export --mode {mode}` folder of the last step."
    )
    report = results_report(f"headless-lm {module.kind} run", results, text)
    step = int(results["global_step"])
    finish_run(
        out_dir,
        results,
        report,
        export=lambda folder: export_module(
            module, folder, mode, step, str(out_dir / "checkpoints" / "last.ckpt")
        ),
    )
    print(f"[headless-lm] finished at step {step}; results in {out_dir}")


def run_pretrain(cfg, kind: str, callbacks=()) -> dict:
    """Pre-train a `kind` (clm | mlm) model from a config; `callbacks` are extra Lightning callbacks."""
    from lmlab.seed import seed_everything
    from lmlab.training import resume_checkpoint

    out_dir = _output_dir(cfg)
    tokenizer = load_tokenizer(cfg.hf_tokenizer) if cfg.hf_tokenizer else None
    mask_id, specials = _mask_ids(cfg, tokenizer) if kind == "mlm" else (None, [])
    weights = None
    if cfg.init_from:
        arch, weights = pretrained_weights(cfg.init_from, kind, cfg.ce_weight == 0)
        cfg = dataclasses.replace(cfg, model_max_seq_len=_positions(arch))
    else:
        arch = _arch_dict(cfg, kind, tokenizer)
    task = _task_dict(cfg)
    seed_everything(cfg.seed)  # the same seed gives the same initial weights
    if kind == "clm":
        task.setdefault("mlm_loss_weight", 0.0)
    module = HeadlessLMModule(kind, arch, task, cfg.hf_tokenizer, mask_id, specials)
    if weights is not None and resume_checkpoint(cfg, out_dir) is None:
        module.model.load_state_dict(weights)
    _data(cfg, kind, module)
    return _fit(cfg, module, out_dir, callbacks)


def _positions(arch: dict) -> int:
    return int(arch.get("max_position_embeddings") or arch.get("n_positions"))


def _plain_arch(config) -> dict:
    """A transformers config as the plain dict kept in checkpoints (no version or naming keys)."""
    data = json.loads(config.to_json_string(use_diff=False))
    data["model_type"] = config.model_type
    for key in ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        data.pop(key, None)
    return data


def pretrained_weights(name_or_path: str, kind: str, headless: bool) -> tuple[dict, dict]:
    """(architecture dict, state dict) to start pre-training from a pretrained model (folder or hub name): the
    backbone for a headless run, backbone and LM head otherwise. A missing LM head is said in one line (it
    starts fresh); any other missing weight is an error."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if kind == "clm" else AutoModelForMaskedLM
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report: the keys that matter are said below
    try:
        model, info = auto.from_pretrained(name_or_path, output_loading_info=True, weights_only=True)
    except Exception as err:  # OSError, ValueError (unknown architecture), pickle errors, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise LmlabError(f"cannot load --init_from {name_or_path} ({type(err).__name__}: {first})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    body = backbone(model)
    prefix = model.base_model_prefix + "."
    missing = list(info.get("missing_keys", ()))
    in_body = [k for k in missing if k.startswith(prefix) or body is model]
    if in_body:
        raise LmlabError(
            f"--init_from {name_or_path} lacks backbone weights ({in_body[0]}, {len(in_body)} in all); "
            "give a folder with the whole model"
        )
    if missing and not headless:
        get_logger("headless_lm").warning(
            f"--init_from {name_or_path} has no LM head ({missing[0]}): the head starts from fresh weights"
        )
    source = body if headless else model
    return _plain_arch(model.config), {k: v.detach().clone() for k, v in source.state_dict().items()}


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
    hp["task"] = {**hp["task"], "attn_implementation": "sdpa"}
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
