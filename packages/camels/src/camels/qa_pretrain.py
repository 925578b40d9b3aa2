"""`camels qa-pretrain`: fine-tune a causal LM on QA pairs (reference prompt format) with Lightning; validate
NLL and greedy F1/EM. `model/` holds the best model by validation NLL (the selection metric, also of early
stopping); results.json names the validation step where F1 and EM were best instead of storing those models
again."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.callbacks import check_finite
from lmlab.config import save_config
from lmlab.io import finish_run, refuse_finished, results_report, write_json
from lmlab.seed import seed_everything
from lmlab.training import StepSampler, build_trainer, compile_module
from torch.utils.data import DataLoader

from camels.config import QaPretrainConfig, validation_updates
from camels.data import collate_lm, load_rows
from camels.models import check_vocab, checked_resume, load_causal_lm, load_tokenizer, open_run_folder
from camels.online import qa_scores


class QaPretrainModule(pl.LightningModule):
    def __init__(self, model: Any, tokenizer: Any, train_pairs: list, val_pairs: list, cfg: QaPretrainConfig):
        super().__init__()
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        self.samples_seen = 0
        self.best = {"nll": math.inf, "max_f1": -math.inf, "exact_match": -math.inf}
        self.best_step = {"nll": -1, "max_f1": -1, "exact_match": -1}
        self.history: list[dict[str, float]] = []
        self.bad_validations = 0

    def train_dataloader(self) -> DataLoader:
        sampler = StepSampler(len(self.train_pairs), seed=self.cfg.seed, start=self.samples_seen)
        return DataLoader(
            self.train_pairs,
            batch_size=self.cfg.lt_batch_size,
            sampler=sampler,
            collate_fn=lambda b: collate_lm(
                self.tokenizer, b, self.cfg.max_question_len, self.cfg.qa_eos, self.cfg.max_text_len
            ),
        )

    def training_step(self, batch: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        self.samples_seen += batch["qa_ids"].shape[0]
        loss = self.model(
            input_ids=batch["qa_ids"], attention_mask=batch["qa_mask"], labels=batch["qa_labels"]
        ).loss
        check_finite(self.global_step + 1, {"qa_nll": loss}, Path(self.cfg.output_dir) / "checkpoints")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_start(self, batch: Any, i: int) -> int | None:
        """Validation due after update k runs before the first micro-batch of update k + 1, not at the end of
        update k: Lightning writes update k's checkpoint before the module's on_train_batch_end, so a run
        resumed from it would skip that validation (its history entry, its best model). It falls between
        updates: every trainer.val_check_interval batches rounded up to whole updates."""
        every = -(-self.trainer.val_check_interval // self.trainer.accumulate_grad_batches)
        due = self.global_step % every == 0
        if due and (not self.history or self.history[-1]["step"] != self.global_step):
            self.run_validation()
            if self.trainer.should_stop:
                return -1  # early stop: skip the update this batch would start
        return None

    def run_validation(self, log: bool = True) -> None:
        if self.trainer.global_rank != 0:
            return
        self.model.eval()
        scores = qa_scores(self.model, self.tokenizer, self.val_pairs, batch_size=16)
        self.model.train()
        scores["step"] = self.global_step
        self.history.append(scores)
        if log:
            self.log_dict({f"val/{k}": float(v) for k, v in scores.items() if k != "step"})
        out = Path(self.cfg.output_dir)
        improved_nll = scores["nll"] < self.best["nll"]
        for key, better in (
            ("nll", improved_nll),
            ("max_f1", scores["max_f1"] > self.best["max_f1"]),
            ("exact_match", scores["exact_match"] > self.best["exact_match"]),
        ):
            if better:
                self.best[key], self.best_step[key] = scores[key], self.global_step
        if improved_nll:
            save_model(self.model, self.tokenizer, out / "model")
        write_json(out / "val_history.json", self.history)
        self.bad_validations = 0 if improved_nll else self.bad_validations + 1
        if self.cfg.early_stop and self.bad_validations >= self.cfg.stop_k:
            self.trainer.should_stop = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)

    def on_save_checkpoint(self, ckpt: dict[str, Any]) -> None:
        ckpt["camels"] = {
            "samples_seen": self.samples_seen,
            "best": self.best,
            "best_step": self.best_step,
            "history": self.history,
            "bad": self.bad_validations,
        }

    def on_load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        state = ckpt["camels"]
        self.samples_seen, self.best, self.best_step, self.history, self.bad_validations = (
            state["samples_seen"],
            state["best"],
            state["best_step"],
            state["history"],
            state["bad"],
        )


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """`save_pretrained` of the model and its tokenizer into a temporary folder renamed over `folder`, so an
    interrupted save never leaves half a model."""
    import shutil

    tmp = folder.with_name(f".{folder.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def run_qa_pretrain(cfg: QaPretrainConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    refuse_finished(cfg.output_dir, cfg.overwrite)  # before any work: a finished run needs --overwrite
    tok = load_tokenizer(cfg.tokenizer_name or cfg.model)
    rows = load_rows(cfg.dataset, cfg.train_path)
    train: list[tuple[str | None, str]] = [(q, a) for _, q, a in rows]
    if cfg.documents:  # each distinct document once, after the pairs (the sampler shuffles)
        train += [(None, d) for d in dict.fromkeys(d for d, _, _ in rows)]
    val = [(q, a) for _, q, a in load_rows(cfg.dataset, cfg.val_path)][: cfg.val_max_pairs]
    model = load_causal_lm(cfg.model, attn_implementation=cfg.attn_implementation)
    check_vocab(tok, model, f"--model {cfg.model}")
    compile_module(model, cfg.compile)  # in place: model/ and the checkpoints keep the eager keys
    out = Path(cfg.output_dir)
    ckpt = checked_resume(cfg, out, "qa-pretrain", "samples_seen")
    module = QaPretrainModule(model, tok, train, val, cfg)
    trainer = build_trainer(
        cfg,
        out,
        gradient_clip_val=cfg.grad_clip_thresh,
        use_distributed_sampler=False,
        # the module validates itself between updates (see on_train_batch_start); Lightning's own loop has
        # nothing to run (limit_val_batches=0)
        val_check_interval=validation_updates(cfg) * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=0,
    )
    open_run_folder(cfg, out)  # every input checked: the run folder starts here
    save_config(cfg, out / "config.yaml")
    trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    if not module.history or module.history[-1]["step"] != module.global_step:
        module.run_validation(log=False)
    result: dict[str, Any] = {"model": "model/", "selected_by": "nll", "steps": module.global_step}
    for key, value in module.best.items():
        result[f"best_{key}"], result[f"best_{key}_step"] = value, module.best_step[key]
    text = (
        f"`model/` is the model of the lowest validation answer NLL (step {module.best_step['nll']}). "
        f"Best max F1 at step {module.best_step['max_f1']}, best EM at step {module.best_step['exact_match']} "
        "(not stored separately; val_history.json has every validation)."
    )
    finish_run(out, result, results_report("camels qa-pretrain", result, text))
    print(f"[camels qa-pretrain] best model (validation NLL) in {out}/model")
    return result
