"""`camels meta-train`: the bilevel loop on Lightning with manual optimisation. One training batch = one
meta-step on `update_batch_size` rows; the weighting model's Adam steps every `accumulate_grad_batches`
batches (so the Trainer's global step counts weighting-model updates). Validation runs inside the loop between
updates, every val_check_interval batches (default val_steps updates) including batch 0, with the same
base-reset schedule and no tape; the best weighting model is kept in `model/`. Resumable: the current base
parameters, the batch counter and the best validation loss travel in the checkpoint."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.callbacks import NonFiniteLossError, check_finite
from lmlab.config import save_config
from lmlab.device import resolve_accelerator, resolve_attn_implementation
from lmlab.errors import LmlabError
from lmlab.io import finish_run, refuse_finished, results_report, write_json
from lmlab.seed import seed_everything
from lmlab.training import StepSampler, build_trainer, compile_module
from torch.utils.data import DataLoader

from camels.config import MetaTrainConfig, validation_updates
from camels.data import collate_docs, load_rows, meta_batch, qa_loc_batch, read_loc_texts
from camels.meta import MetaTrainer, NonFiniteInnerLoss, base_params
from camels.models import check_vocab, checked_resume, load_causal_lm, load_tokenizer, open_run_folder
from camels.viz import token_weight_pairs, write_weight_views
from camels.weighting import CaMeLSWeightModel

LOSS_TERMS = ("qa_loss", "total_loss")


def build_weight_model(cfg: MetaTrainConfig, base: Any, attn_implementation: str) -> CaMeLSWeightModel:
    encoder: Any
    if cfg.pretrained_model:
        encoder = cfg.pretrained_model
    else:  # the base model's architecture, randomly initialised
        from transformers import AutoConfig

        encoder = AutoConfig.for_model(**base.config.to_dict())
    return CaMeLSWeightModel(
        encoder,
        hidden=cfg.hidden,
        non_linearity=cfg.non_linearity,
        normalize=cfg.normalize,
        freeze_base=cfg.freeze_base,
        attn_implementation=attn_implementation,
    )


class MetaTrainModule(pl.LightningModule):
    def __init__(
        self,
        weight_model: CaMeLSWeightModel,
        base_model: Any,
        tokenizer: Any,
        rows: list,
        val_rows: list,
        loc: list[str],
        val_loc: list[str],
        cfg: MetaTrainConfig,
    ):
        super().__init__()
        self.automatic_optimization = False
        # the frozen base model: lmlab's TrainMode leaves it in eval mode, and the meta-step sets its mode per
        # phase (train for the inner steps when inner_dropout, eval for the outer loss)
        self.eval_modules = ("base_model",)
        self.weight_model, self.base_model, self.tokenizer, self.cfg = (
            weight_model,
            base_model,
            tokenizer,
            cfg,
        )
        self.rows, self.val_rows, self.loc, self.val_loc = rows, val_rows, loc, val_loc
        self.meta: MetaTrainer | None = None
        self.best_val = math.inf
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._restored: dict[str, Any] | None = None
        self._update_metrics: dict[str, tuple[float, int]] = {}  # name -> (sum, count) within an update
        random.Random(cfg.seed).shuffle(self.loc)
        # qa_loc: the meta-train QA pairs, shuffled, as a second (in-domain) locality set; validation: in order
        self.qa_loc = random.Random(cfg.seed + 1).sample(rows, len(rows)) if cfg.qa_loc else []

    # -------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        self.base_model.requires_grad_(False)

    def _meta_trainer(self) -> MetaTrainer:
        if self.meta is None:
            self.meta = MetaTrainer(
                self.weight_model,
                self.base_model,
                self.optimizers(),
                self.cfg,
                self.cfg.update_batch_size,
                self.cfg.reset_base_freq,
                self.cfg.bm_learned_layers,
            )
            if self._restored is not None:
                self.meta.batches_seen = self._restored["batches_seen"]
                self.meta.params = {
                    n: p.to(self.device).requires_grad_() for n, p in self._restored["params"].items()
                }
        return self.meta

    def train_dataloader(self) -> DataLoader:
        seen = self._restored["batches_seen"] if self._restored else 0
        sampler = StepSampler(len(self.rows), seed=self.cfg.seed, start=seen * self.cfg.update_batch_size)
        return DataLoader(self.rows, batch_size=self.cfg.update_batch_size, sampler=sampler, collate_fn=list)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.Adam(
            [p for p in self.weight_model.parameters() if p.requires_grad], lr=self.cfg.outer_lr
        )
        if self.cfg.reduce_lr_on_plateau:
            # stepped by hand after each validation; its counters travel in the checkpoint's "camels" entry,
            # the reduced lr in the optimizer state
            self.plateau = plateau_scheduler(optimizer)
            if self._restored is not None and self._restored.get("plateau") is not None:
                self.plateau.load_state_dict(self._restored["plateau"])
        return optimizer

    def _to(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _loc_batch(self, texts: list[str], qa_rows: list, index: int) -> dict[str, Any] | None:
        """The locality sets of batch `index`: `open_web_text` (web_text_loc) and `qa` (qa_loc), each
        loc_batch_size items, cycling through their lists."""
        if self.cfg.c_kl == 0:
            return None
        n = self.cfg.loc_batch_size

        def pick(items: list) -> list:
            return [items[(index * n + j) % len(items)] for j in range(n)]

        sets = {}
        if texts and self.cfg.web_text_loc:
            sets["open_web_text"] = collate_docs(self.tokenizer, pick(texts), self.cfg.max_text_len)
        if qa_rows and self.cfg.qa_loc:
            pairs = [(q, a) for _, q, a in pick(qa_rows)]
            sets["qa"] = qa_loc_batch(self.tokenizer, pairs, self.cfg.max_question_len)
        return {name: self._to(b) for name, b in sets.items()} or None

    # ------------------------------------------------------------------------------------------ the loop
    def training_step(self, rows: list, i: int) -> None:
        try:
            self._meta_step(rows)
        except NonFiniteInnerLoss:
            raise NonFiniteLossError(
                self.global_step + 1,
                "loss term 'inner weighted_nll' is not finite (lower --inner_lr or --outer_lr)",
                Path(self.cfg.output_dir) / "checkpoints",
            ) from None

    def _meta_step(self, rows: list) -> None:
        meta = self._meta_trainer()
        # between updates: every trainer.val_check_interval batches, rounded up to whole updates
        acc = self.cfg.accumulate_grad_batches
        every = -(-self.trainer.val_check_interval // acc) * acc
        if meta.batches_seen % every == 0:
            self.validate_and_save()
        sample_every = self.cfg.sample_steps * acc if self.cfg.sample_steps else every
        if meta.batches_seen % sample_every == 0:
            self.write_samples()
        batch = self._to(meta_batch(self.tokenizer, rows, self.cfg.max_text_len, self.cfg.max_question_len))
        metrics = meta.train_batch(
            batch, self._loc_batch(self.loc, self.qa_loc, meta.batches_seen), self._check_finite
        )
        self.log("total_loss", metrics["total_loss"], prog_bar=True, logger=False)
        for k, v in metrics.items():
            total, count = self._update_metrics.get(k, (0.0, 0))
            self._update_metrics[k] = (total + v, count + 1)
        if "grad_norm" in metrics:  # this batch ended a weighting-model update
            self._log_update()

    def _check_finite(self, metrics: dict[str, float]) -> None:
        """Stop on a non-finite meta-loss term before the weighting model steps on it (nothing is saved)."""
        terms = {k: v for k, v in metrics.items() if k in LOSS_TERMS or k.endswith("_kl_div")}
        check_finite(self.global_step + 1, terms, Path(self.cfg.output_dir) / "checkpoints")

    def _log_update(self) -> None:
        """One metrics row per weighting-model update (the mean over its meta-steps), logged
        under the update's global step - 1 like Lightning's automatic rows and the validation rows, so the
        rows of a resumed run replace exactly those the interrupted run wrote after its checkpoint."""
        step = self.global_step
        if step % self.cfg.log_every_n_steps == 0 or step >= self.trainer.max_steps:
            row = {f"train/{k}": total / count for k, (total, count) in self._update_metrics.items()}
            for logger in self.loggers:
                logger.log_metrics(row, step=step - 1)
        self._update_metrics = {}

    def _val_batches(self) -> tuple[list, list]:
        k = self.cfg.update_batch_size
        chunks = [self.val_rows[i : i + k] for i in range(0, len(self.val_rows), k)][
            : self.cfg.val_max_batches
        ]
        batches = [
            self._to(meta_batch(self.tokenizer, c, self.cfg.max_text_len, self.cfg.max_question_len))
            for c in chunks
        ]
        val_qa = self.val_rows if self.cfg.qa_loc else []
        return batches, [self._loc_batch(self.val_loc, val_qa, j) for j in range(len(batches))]

    def validate_and_save(self, step_scheduler: bool = True) -> None:
        """Validate, keep the best weighting model, and step the plateau scheduler (not after the last
        validation at the end of training, so a resumed run steps it exactly as an uninterrupted one)."""
        meta = self._meta_trainer()
        metrics = meta.validate(*self._val_batches())
        loss = metrics.get("val/total_loss", math.inf)
        if self.plateau is not None:
            if step_scheduler:
                self.plateau.step(loss)
            metrics["outer_lr"] = self.plateau.optimizer.param_groups[0]["lr"]
        for (
            logger
        ) in self.loggers:  # direct logger calls: this also runs from on_train_end, where self.log is refused
            logger.log_metrics(metrics, step=self.global_step)
        out = Path(self.cfg.output_dir)
        if loss < self.best_val and self.trainer.global_rank == 0:
            self.best_val = loss
            epoch = meta.batches_seen * self.cfg.update_batch_size // max(1, len(self.rows))
            self.weight_model.save_pretrained(out / "model", self.tokenizer)
            best = {"val_total_loss": loss, "epoch": epoch, "batches_seen": meta.batches_seen}
            write_json(out / "checkpoints" / "best.json", best)

    @torch.no_grad()
    def write_samples(self) -> None:
        if self.trainer.global_rank != 0 or not self.val_rows:
            return
        meta = self._meta_trainer()
        rows = self.val_rows[: self.cfg.update_batch_size]
        docs = collate_docs(self.tokenizer, [r[0] for r in rows], self.cfg.max_text_len)
        self.weight_model.eval()
        w = self.weight_model(docs["input_ids"].to(self.device), docs["attention_mask"].to(self.device)).cpu()
        self.weight_model.train()
        pairs = token_weight_pairs(self.tokenizer, docs["input_ids"], docs["attention_mask"], w)
        write_weight_views(
            pairs,
            Path(self.cfg.output_dir) / "samples" / f"weights_{meta.batches_seen}",
            title=f"CaMeLS weights after {meta.batches_seen} batches",
        )

    def on_train_end(self) -> None:
        self.validate_and_save(step_scheduler=False)
        self.write_samples()

    # ------------------------------------------------------------------------------------------ resume
    def on_save_checkpoint(self, ckpt: dict[str, Any]) -> None:
        meta = self._meta_trainer()
        ckpt["camels"] = {
            "batches_seen": meta.batches_seen,
            "params": {n: p.detach().cpu() for n, p in meta.params.items()},
            "best_val": self.best_val,
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }
        # the frozen base model is rebuilt from base_model; only the weighting model goes in the state dict
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("base_model.")}

    def on_load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        self._restored = ckpt["camels"]
        self.best_val = self._restored["best_val"]
        ckpt["state_dict"].update({f"base_model.{k}": v for k, v in self.base_model.state_dict().items()})


def plateau_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The reference's ReduceLROnPlateau on the validation total loss: lr × 0.7071 after 6 validations
    (patience 5) without a new best."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.7071, patience=5)


def run_meta_train(cfg: MetaTrainConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    refuse_finished(cfg.output_dir, cfg.overwrite)  # before any work: a finished run needs --overwrite
    tok = load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    rows = load_rows(cfg.dataset, cfg.train_path, cfg.full_passage)
    val_rows = load_rows(cfg.dataset, cfg.val_path, cfg.full_passage)
    loc = read_loc_texts(cfg.loc_train_path) if cfg.loc_train_path and cfg.web_text_loc else []
    val_loc = read_loc_texts(cfg.loc_val_path) if cfg.loc_val_path and cfg.web_text_loc else []
    # the tape needs double backward: eager attention by default (fused SDPA kernels have none)
    attn = resolve_attn_implementation(cfg.attn_implementation, resolve_accelerator(cfg.device))
    base = load_causal_lm(cfg.base_model, cfg.base_model_state_dict, attn_implementation=attn)
    check_vocab(tok, base, f"--base_model {cfg.base_model}")
    weight_model = build_weight_model(cfg, base, attn)
    check_vocab(tok, weight_model.encoder, f"the weighting model's encoder ({cfg.pretrained_model})")
    # the weighting model only: the base model's inner-loop tape needs double backward, which torch.compile lacks
    compile_module(weight_model, cfg.compile)
    out = Path(cfg.output_dir)
    ckpt = checked_resume(cfg, out, "meta-train", "batches_seen")
    module = MetaTrainModule(weight_model, base, tok, rows, val_rows, loc, val_loc, cfg)
    trainer = build_trainer(
        cfg,
        out,
        # manual optimisation: the module steps every cfg.accumulate_grad_batches batches itself (Lightning
        # refuses its own accumulation here)
        accumulate_grad_batches=1,
        use_distributed_sampler=False,
        # the module validates itself between updates (see _meta_step); Lightning's loop has nothing to run
        val_check_interval=validation_updates(cfg) * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=0,
    )
    open_run_folder(cfg, out)  # every input checked: the run folder starts here
    save_config(cfg, out / "config.yaml")
    trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    if not (out / "checkpoints" / "best.json").is_file():
        raise LmlabError(
            "no validation gave a finite total loss, so no weighting model was kept; check --val_path and "
            "--loc_val_path, or lower --inner_lr"
        )
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    result = {
        "best_val_total_loss": module.best_val,
        "best_batches_seen": best["batches_seen"],
        "weight_model_path": str(out / "model"),
        "batches": module.meta.batches_seen if module.meta else 0,
        "steps": module.global_step,
    }
    text = (
        f"`model/` is the weighting model of the lowest validation total loss (after {best['batches_seen']} "
        "batches): its encoder loads with transformers' AutoModel, the head is weighting_head.safetensors "
        "(`camels eval --weight_model_path model/` loads both). The final weights are in checkpoints/last.ckpt."
    )
    finish_run(out, result, results_report("camels meta-train", result, text))
    print(f"[camels meta-train] weighting model (best validation loss): {out}/model")
    return result


__all__ = ["MetaTrainModule", "base_params", "build_weight_model", "plateau_scheduler", "run_meta_train"]
