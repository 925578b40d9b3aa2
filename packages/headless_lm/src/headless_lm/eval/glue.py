"""GLUE fine-tuning protocol of the paper (§4.1, App. E): AdamW, lr 1e-5, batch 32, constant LR after 10% linear
warm-up, weight decay 0 (Table 14; 0.01 in the text and the reference script: --weight_decay), max length 128,
dropout 0.1 + linear head on the first token's final hidden state, MSE for STS-B, balanced cross-entropy,
best epoch over 10, mean over 3 seeds; RTE fine-tuned but excluded from the average; MNLI scored on matched and
mismatched dev concatenated.

Fixes of the reference (`glue_finetuning.py`, which does not run): attention masks are passed, sentence pairs
are joined with the tokenizer's separator (EOS for Pythia-style tokenizers without one, instead of nothing),
a pad token is set explicitly, CE is applied to logits (not to softmax probabilities), training data shuffled.

Each (task, seed) trains through `lmlab.training.build_trainer` in `<output_dir>/<task>/seed<k>/`: resumable
checkpoints, bit-exact resume with dropout on, a stop on a non-finite loss; a finished one leaves its dev scores
in `history.json`, so running the same command again skips it and resumes the interrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lmlab.errors import LmlabError
from lmlab.glue import TASKS
from torch import nn
from torch.utils.data import DataLoader

from headless_lm.config import ALL_TASKS, GlueConfig
from headless_lm.losses import balanced_cross_entropy

EXCLUDED_FROM_AVERAGE = ("rte",)
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "spearmanr"}


def normalise_task(name: str) -> str:
    from lmlab.glue import normalise_task as lmlab_task

    task = lmlab_task(name)
    if task not in ALL_TASKS:
        raise LmlabError(
            f"GLUE task {name!r} is not part of the protocol; choose from {', '.join(ALL_TASKS)}"
        )
    return task


def read_task(data_dir: str | Path, task: str, split: str, max_samples: int | None = None):
    """(texts_a, texts_b | None, labels) of a GLUE task split ("train" or "dev"; MNLI's dev is matched and
    mismatched concatenated), read strictly by `lmlab.glue.read_glue` from a raw GLUE folder (`MRPC/dev.tsv`,
    headerless CoLA, `MNLI/dev_matched.tsv`) or files with the Hugging Face column names."""
    from lmlab.glue import eval_splits, read_glue

    task = normalise_task(task)
    parts = [
        read_glue(data_dir, task, name, max_samples)
        for name in (["train"] if split == "train" else eval_splits(task))
    ]
    for part in parts:
        if part.labels is None:
            raise LmlabError(
                f"{part.source} has no labels; fine-tuning needs the labelled train and dev files"
            )
    a = [t for part in parts for t in part.texts_a]
    b = None if parts[0].texts_b is None else [t for part in parts for t in part.texts_b]
    return a, b, [y for part in parts for y in part.labels]


def encode_pairs(tokenizer, a: list[str], b: list[str] | None, max_len: int) -> list[list[int]]:
    """Token ids of single sentences or pairs; pairs joined by the tokenizer's own template when it has a
    separator token, else by EOS (Pythia-style tokenizers)."""
    if b is None:
        return tokenizer(a, truncation=True, max_length=max_len)["input_ids"]
    if tokenizer.sep_token_id is not None:
        return tokenizer(a, b, truncation=True, max_length=max_len)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LmlabError("the tokenizer has neither a separator nor an EOS token to join sentence pairs")
    out = []
    for x, y in zip(a, b, strict=True):
        ids = (
            tokenizer(x, add_special_tokens=False)["input_ids"]
            + [eos]
            + tokenizer(y, add_special_tokens=False)["input_ids"]
        )
        out.append(ids[:max_len])
    return out


def _collate(pad_id: int, regression: bool):
    def fn(items):
        width = max(len(ids) for ids, _ in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (seq, _) in enumerate(items):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        labels = torch.tensor([y for _, y in items], dtype=torch.float if regression else torch.long)
        return ids, mask, labels

    return fn


class GlueModule(pl.LightningModule):
    """Backbone + dropout 0.1 + linear on the first token's last hidden state.

    The training data is an endless shuffled stream (`StepSampler`: epoch e is a permutation seeded by
    seed + e) that a resumed run continues at its next sample; the dev score of every finished epoch is part of
    the checkpoint (plain floats, loadable with weights_only=True)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_labels: int,
        task: str,
        cfg: GlueConfig,
        total_steps: int,
        train_items: list,
        collate: Any,
        seed: int,
    ):
        super().__init__()
        self.backbone = backbone
        dim = self.backbone.get_input_embeddings().weight.shape[1]
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(dim, num_labels)
        self.task, self.num_labels, self.cfg, self.total = task, num_labels, cfg, total_steps
        self.train_items, self.collate, self.seed = train_items, collate, seed
        self.history: list[float] = []  # dev scores
        self.history_steps: list[int] = []  # the optimizer step of each
        self.samples_seen = 0

    def forward(self, ids, mask):
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return self.head(self.dropout(hidden))

    def _loss(self, logits, labels):
        if self.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels)
        if self.cfg.loss == "balanced":
            return balanced_cross_entropy(logits, labels)
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, batch, _):
        ids, mask, labels = batch
        self.samples_seen += len(labels)
        loss = self._loss(self(ids, mask), labels)  # lmlab's FiniteGuard stops on a non-finite loss
        self.log("train/loss", loss, batch_size=len(labels))
        return loss

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> float:
        """The task's main dev metric (accuracy, Matthews for CoLA, Spearman for STS-B)."""
        from lmlab.metrics import glue_metrics

        was_training = self.training
        self.eval()
        preds, labels = [], []
        for ids, mask, y in loader:
            logits = self(ids.to(self.device), mask.to(self.device))
            preds += (
                (logits.squeeze(-1) if self.num_labels == 1 else logits.argmax(-1)).float().cpu().tolist()
            )
            labels += y.float().tolist()
        self.train(was_training)
        if self.num_labels > 1:
            preds, labels = [int(p) for p in preds], [int(y) for y in labels]
        metrics = glue_metrics(self.task, preds, labels)
        return float(metrics.get(MAIN_METRIC.get(self.task, "accuracy"), 0.0))

    def configure_optimizers(self):
        from transformers import get_scheduler

        opt = torch.optim.AdamW(
            self.parameters(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        warm = max(1, int(self.cfg.warmup_ratio * self.total))
        sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=warm)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["dev_history"] = list(self.history)
        checkpoint["dev_steps"] = list(self.history_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.samples_seen = int(checkpoint["samples_seen"])
        self.history = [float(x) for x in checkpoint["dev_history"]]
        self.history_steps = [int(x) for x in checkpoint["dev_steps"]]

    def train_dataloader(self) -> DataLoader:
        from lmlab.training import StepSampler

        sampler = StepSampler(len(self.train_items), seed=self.seed, start=self.samples_seen)
        return DataLoader(
            self.train_items, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=self.collate
        )


class DevEvaluation(pl.Callback):
    """Scores the dev set at the end of every epoch (`steps_per_epoch` optimizer steps) and after the last step,
    or every `every` micro-batches (`--val_check_interval`). It runs before that step's checkpoint is written
    (Lightning calls checkpoint callbacks last), so a checkpoint holds every dev score up to its step and a
    resumed run never repeats or loses one."""

    def __init__(self, loader: DataLoader, steps_per_epoch: int, total: int, every: int | None):
        self.loader, self.steps_per_epoch, self.total, self.every = loader, steps_per_epoch, total, every

    def _due(self, trainer: pl.Trainer, module: GlueModule) -> int:
        """How many dev scores the run should hold by now."""
        last = int(trainer.global_step >= self.total)
        if self.every:
            micro = module.samples_seen // module.cfg.batch_size
            return micro // self.every + (last if micro % self.every else 0)
        step = trainer.global_step
        return step // self.steps_per_epoch + (last if step % self.steps_per_epoch else 0)

    def on_train_batch_end(self, trainer: pl.Trainer, module: GlueModule, *args: Any) -> None:
        if len(module.history) < self._due(trainer, module):
            with trainer.precision_plugin.val_step_context():
                module.history.append(module.evaluate(self.loader))
            module.history_steps.append(trainer.global_step)
            for logger in trainer.loggers:  # one row, under Lightning's step of this step's training loss
                logger.log_metrics({"dev/score": module.history[-1]}, step=trainer.global_step - 1)


def aggregate(per_task_seed_history: dict[str, list[list[float]]]) -> dict:
    """Best epoch per (task, seed), mean/std over seeds per task, average over tasks without RTE."""
    tasks = {}
    for task, histories in per_task_seed_history.items():
        best = [max(h) for h in histories]
        tasks[task] = {
            "best_per_seed": best,
            "mean": statistics.fmean(best),
            "std": statistics.pstdev(best) if len(best) > 1 else 0.0,
        }
    counted = [v["mean"] for t, v in tasks.items() if t not in EXCLUDED_FROM_AVERAGE]
    return {
        "tasks": tasks,
        "average": statistics.fmean(counted) if counted else None,
        "average_excludes": list(EXCLUDED_FROM_AVERAGE),
    }


def finetune_task(
    cfg: GlueConfig, task: str, seed: int, tokenizer, backbone: nn.Module, data: dict, run_dir: Path
) -> dict:
    """Fine-tune one (task, seed) in `run_dir`; returns {"history": dev score per evaluation, "steps": their
    optimizer steps}. A finished run's scores are read back from its `history.json`; an interrupted one resumes
    from its `checkpoints/last.ckpt`."""
    from lmlab.io import write_json
    from lmlab.seed import seed_everything
    from lmlab.training import build_trainer, compile_module, resume_checkpoint

    done = run_dir / "history.json"
    if done.is_file():
        return json.loads(done.read_text())
    seed_everything(seed)  # the head's initialisation
    n_labels = TASKS[task].num_labels
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    coll = _collate(pad if pad is not None else 0, n_labels == 1)
    micro_batches = math.ceil(len(data["train"]) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_batches / cfg.accumulate_grad_batches)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    dev = DataLoader(data["dev"], batch_size=cfg.batch_size, collate_fn=coll)
    module = GlueModule(copy.deepcopy(backbone), n_labels, task, cfg, total, data["train"], coll, seed)
    compile_module(module.backbone, cfg.compile)
    opts = dataclasses.replace(cfg, output_dir=str(run_dir), max_steps=total, seed=seed)
    evaluation = DevEvaluation(dev, steps_per_epoch, total, cfg.val_check_interval)
    trainer = build_trainer(opts, run_dir, callbacks=[evaluation], use_distributed_sampler=False)
    trainer.fit(module, ckpt_path=resume_checkpoint(opts, run_dir), weights_only=True)
    result = {"task": task, "seed": seed, "history": module.history, "steps": module.history_steps}
    write_json(done, result)
    return result


# the options a finished (task, seed) run depends on: a rerun into the same folder must use the same values
PROTOCOL_KEYS = (
    "model",
    "learning_rate",
    "batch_size",
    "accumulate_grad_batches",
    "epochs",
    "max_steps",
    "val_check_interval",
    "warmup_ratio",
    "weight_decay",
    "loss",
    "max_seq_len",
    "data_dir",
    "max_train_samples",
)


def _check_same_protocol(cfg: GlueConfig, root: Path) -> None:
    import yaml
    from lmlab.config import config_to_dict

    saved = root / "config.yaml"
    if not saved.is_file():
        return
    before = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    now = config_to_dict(cfg)
    for key in PROTOCOL_KEYS:
        if before.get(key) != now[key]:
            raise LmlabError(
                f"{root} holds GLUE runs made with --{key} {before.get(key)}, not {now[key]}; "
                "give another --output_dir to start afresh"
            )


def _load_backbone(model_dir: str, attn_implementation: str) -> nn.Module:
    """The model's backbone (AutoModel). The weights it leaves out (an LM head of an exported `...ForMaskedLM` or
    `...ForCausalLM`) are said in one line instead of transformers' load report."""
    import transformers
    from lmlab.logging import get_logger
    from transformers import AutoModel

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(
            model_dir, weights_only=True, attn_implementation=attn_implementation, output_loading_info=True
        )
    except Exception as err:  # transformers raises OSError, ValueError, pickle errors, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise LmlabError(f"cannot load --model {model_dir} ({type(err).__name__}: {first})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    log = get_logger("headless_lm")
    unused = list(info.get("unexpected_keys", ()))
    missing = [
        k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")
    ]  # the head reads token 0
    if unused:
        log.info(f"--model {model_dir}: {len(unused)} weights of its LM head are not used ({unused[0]}, ...)")
    if missing:
        log.warning(
            f"--model {model_dir} lacks {len(missing)} backbone weights ({missing[0]}, ...): they start fresh"
        )
    return model


def _keep_latest_checkpoint(cfg: GlueConfig, root: Path, run_dir: Path) -> None:
    """`<output_dir>/checkpoints/last.ckpt` links to the checkpoint of the run that finished last; without
    --keep_checkpoints the earlier runs' checkpoints are deleted (their dev scores stay in history.json)."""
    link = root / "checkpoints" / "last.ckpt"
    if link.is_symlink() and not cfg.keep_checkpoints:
        previous = link.resolve().parent
        if previous != (run_dir / "checkpoints").resolve():
            shutil.rmtree(previous, ignore_errors=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(run_dir / "checkpoints" / "last.ckpt", link.parent))


def _metrics_rows(tasks: list[str], runs: dict[str, dict[int, dict]]) -> list[dict]:
    """metrics.jsonl of the whole protocol: every dev score as {"step": s, "<task>/seed<k>/dev": score}."""
    rows = []
    for task in tasks:
        for seed, run in runs.get(task, {}).items():
            rows += [
                {"step": step, f"{task}/seed{seed}/dev": score}
                for step, score in zip(run["steps"], run["history"], strict=True)
            ]
    return rows


def _export_latest(root: Path, backbone: nn.Module, tokenizer, last: tuple[str, int]):
    """model/: the fine-tuned backbone of the run that finished last (save_pretrained, loads with AutoModel),
    its tokenizer, and its classifier (`classifier.safetensors`: dropout 0.1 + linear on the first token)."""

    def export(folder: Path) -> None:
        from lmlab.io import save_safetensors, write_json

        ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
        model = copy.deepcopy(backbone)
        model.load_state_dict(
            {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        )
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        save_safetensors(
            {k: v for k, v in state.items() if k.startswith("head.")}, folder / "classifier.safetensors"
        )
        task, seed = last
        write_json(
            folder / "glue_head.json",
            {
                "task": task,
                "seed": seed,
                "num_labels": TASKS[task].num_labels,
                "labels": list(TASKS[task].label_names),
                "head": "dropout 0.1 + linear (classifier.safetensors) on the first token's last hidden state",
            },
        )

    return export


def _report(result: dict) -> str:
    from lmlab.io import results_report

    lines = [
        f"- {t}: {v['mean']:.4f} ± {v['std']:.4f} (best dev epoch, {len(v['best_per_seed'])} seed(s))"
        for t, v in result["tasks"].items()
    ]
    if "average" in result and len(result["tasks"]) > 1:
        lines.append(
            f"- average over the tasks without {', '.join(EXCLUDED_FROM_AVERAGE)}: {result['average']:.4f}"
        )
    text = "\n".join(lines) + "\n\n`model/` is the fine-tuned model of the run that finished last."
    return results_report("headless-lm GLUE fine-tuning", result, text)


def run_glue(cfg: GlueConfig) -> dict:
    from lmlab.config import save_config
    from lmlab.device import resolve_accelerator, resolve_attn_implementation
    from lmlab.io import atomic_write, finish_run, prepare_run_dir, write_json

    from headless_lm.config import world_size
    from headless_lm.data import load_tokenizer

    root = Path(cfg.output_dir)
    if world_size(cfg.devices, cfg.num_nodes, cfg.device) > 1:
        raise LmlabError("glue fine-tunes each (task, seed) on one device: give --devices 1 --num_nodes 1")
    tasks = [normalise_task(t) for t in cfg.tasks]
    _check_same_protocol(cfg, root)
    # every input is read and checked before anything is written
    tokenizer = load_tokenizer(cfg.model)
    pad_choice = "tokenizer pad"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_choice = "eos as pad"
    accelerator = resolve_accelerator(cfg.device)
    backbone = _load_backbone(cfg.model, resolve_attn_implementation(cfg.attn_implementation, accelerator))
    data = {}
    for task in tasks:
        data[task] = {}
        for split in ("train", "dev"):
            a, b, y = read_task(
                cfg.data_dir, task, split, cfg.max_train_samples if split == "train" else None
            )
            data[task][split] = list(zip(encode_pairs(tokenizer, a, b, cfg.max_seq_len), y, strict=True))
    prepare_run_dir(root, cfg.overwrite, also=[root / t for t in ALL_TASKS])  # --overwrite: every task afresh
    save_config(cfg, root / "config.yaml")
    protocol = {
        "loss": cfg.loss,
        "learning_rate": cfg.learning_rate,
        "epochs": cfg.epochs,
        "seeds": [cfg.seed + s for s in cfg.seeds],
        "weight_decay": cfg.weight_decay,
        "pair_separator": "tokenizer sep" if tokenizer.sep_token_id is not None else "eos",
        "padding": pad_choice,
        "mnli_dev": "matched+mismatched concatenated",
    }
    runs: dict[str, dict[int, dict]] = {}
    for task in tasks:
        for offset in cfg.seeds:
            seed = cfg.seed + offset
            run_dir = root / task / f"seed{seed}"
            runs.setdefault(task, {})[seed] = finetune_task(
                cfg, task, seed, tokenizer, backbone, data[task], run_dir
            )
            _keep_latest_checkpoint(cfg, root, run_dir)
            with atomic_write(root / "metrics.jsonl") as fh:
                fh.writelines(json.dumps(row) + "\n" for row in _metrics_rows(tasks, runs))
        done = aggregate({task: [r["history"] for r in runs[task].values()]})["tasks"][task]
        write_json(root / task / "results.json", {**done, "protocol": protocol})
        print(
            f"[headless-lm glue] {task}: {done['mean']:.4f} ± {done['std']:.4f} over {len(cfg.seeds)} seed(s)"
        )
    result = aggregate({t: [r["history"] for r in runs[t].values()] for t in tasks})
    if result["average"] is None:
        del result["average"]
    result["per_epoch"] = {t: [r["history"] for r in runs[t].values()] for t in tasks}
    result["protocol"] = protocol
    last = (tasks[-1], cfg.seed + cfg.seeds[-1])
    export = None
    if (root / "checkpoints" / "last.ckpt").is_file():
        export = _export_latest(root, backbone, tokenizer, last)
    else:  # every run had finished before and the latest one's checkpoint was deleted since
        print(f"[headless-lm glue] no checkpoint of {last[0]} seed {last[1]} left: model/ is not rewritten")
    finish_run(root, result, _report(result), export=export)
    if "average" in result and len(tasks) > 1:
        print(f"[headless-lm glue] average (without RTE) {result['average']:.4f}; results in {root}")
    else:
        print(f"[headless-lm glue] results in {root}")
    return {t: v["mean"] for t, v in result["tasks"].items()}
