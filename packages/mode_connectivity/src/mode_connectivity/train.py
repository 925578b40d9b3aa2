"""`train` (reference `tune_singletask.py`) on Lightning: full fine-tuning, the paper's adapter, LoRA, prefix.

The run folder is `--output_dir` (lmlab's layout: config.yaml, metrics.jsonl, checkpoints/last.ckpt, model/,
results.json, report.md, DONE last) with `checkpoint@<N>` every `--output_interval` updates and `checkpoint-best`
(dev metric >= best so far, every `--valid_interval` updates; a link to `checkpoint@<N>` when saved at the same
step). Several values in `--learning_rate_list`/`--bsz_list` make a sweep: one such run folder per job in
`<output_dir>/lr_<lr>_bsz_<bsz>_seed_<seed>/` (a finished one is skipped) and `<output_dir>/results.csv` with a
row per job and seed. `--bsz_list` is the global batch of one update, read in `--accumulate_grad_batches`
micro-batches per process. An interrupted job resumes from its `checkpoints/last.ckpt` bit-exactly: at the next
sample (StepSampler), with the same answer picks (keyed on the stream position) and the same dropout (lmlab's
ExactResume keys it on the micro-batch). Every input is read and checked before anything is written.
Cartography mode records per-example correctness/confidence on the train set every epoch.

Fixes relative to the reference: gradient accumulation steps after `accum` micro-batches (the reference stepped
after the very first), the initial state for `--SGD_noise` is written by `--save_init` (no code edits), and the
full-model checkpoint-best is kept by default.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lmlab.config import save_config
from lmlab.errors import LmlabError
from lmlab.io import finish_run, is_done, refuse_finished, results_report
from lmlab.logging import get_logger
from lmlab.training import build_trainer, compile_module, param_groups, resume_checkpoint

from mode_connectivity.data import (
    EncodedSplit,
    TextTaskOptions,
    label_candidates,
    load_split,
    task_name_of,
    train_loader,
)
from mode_connectivity.evaluation import CandidateScorer, cartography_epoch, evaluate_split
from mode_connectivity.metrics import metric_for_task
from mode_connectivity.models import (
    build_for_method,
    clear_finished_run,
    delta_state,
    export_model,
    load_checkpoint,
    load_into,
    load_tokenizer,
    save_checkpoint,
)

log = get_logger("mode-connectivity")


def job_name(lr: float, bsz: int, seed: int) -> str:
    return f"lr_{lr}_bsz_{bsz}_seed_{seed}"


class T5TaskModule(pl.LightningModule):
    def __init__(
        self, cfg, model, tokenizer, train_split: EncodedSplit, lr: float, micro: int, total_steps: int
    ):
        super().__init__()
        self.cfg, self.model, self.tokenizer = cfg, compile_module(model, cfg.compile), tokenizer
        self.train_split, self.lr, self.micro, self.total_steps = train_split, lr, micro, total_steps
        self.samples_seen = 0  # this rank's; all ranks together have read world * samples_seen
        self.world = 1
        self.state: dict[str, Any] = {
            "best": -math.inf,
            "bad_validations": 0,
            "epochs_done": 0,
            "last_step": 0,
        }

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch, batch_idx):
        self.samples_seen += batch["input_ids"].shape[0]
        loss = self.model(**batch).loss  # lmlab's FiniteGuard stops on a non-finite loss or gradient
        self.log("train_loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        from transformers.optimization import Adafactor

        wd = self.cfg.weight_decay if self.cfg.tune_method == "model" else 0.0
        opt = Adafactor(
            param_groups(self.model, wd),
            lr=self.lr,
            scale_parameter=False,
            relative_step=False,
            warmup_init=False,
        )
        if self.cfg.lr_decay_style == "constant":
            return opt
        from transformers import get_scheduler

        warm = int(self.cfg.warmup_rate * self.total_steps)
        sched = get_scheduler("linear", opt, num_warmup_steps=warm, num_training_steps=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        return train_loader(
            self.train_split, self.cfg.seed, self.samples_seen, self.micro, self.tokenizer.pad_token_id
        )

    def on_save_checkpoint(self, checkpoint):
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["mc_state"] = dict(self.state)

    def on_load_checkpoint(self, checkpoint):
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
        self.state.update(checkpoint.get("mc_state", {}))


class JobCallback(pl.Callback):
    """Interval checkpoints, validation + checkpoint-best + early stop, cartography at epoch ends."""

    def __init__(
        self, job_dir: Path, cfg, dev: EncodedSplit | None, metric: str, scorer, carto_path: Path | None
    ):
        self.job_dir, self.cfg, self.dev, self.metric, self.scorer = job_dir, cfg, dev, metric, scorer
        self.carto_path = carto_path

    def _meta(self, module: T5TaskModule, step: int) -> dict[str, Any]:
        from lmlab.config import config_to_dict

        return {
            "step": step,
            "epoch": module.samples_seen * module.world / max(1, len(module.train_split)),
            "args": config_to_dict(self.cfg),
            "model_config": module.model.config.to_dict() if hasattr(module.model, "config") else {},
        }

    def on_train_batch_end(self, trainer, module: T5TaskModule, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == module.state["last_step"]:
            return  # mid-accumulation micro-batch
        module.state["last_step"] = step
        cfg = self.cfg
        if trainer.is_global_zero:
            if not cfg.cartography and step % cfg.output_interval == 0:
                save_checkpoint(
                    self.job_dir / f"checkpoint@{step}",
                    module.model,
                    cfg.tune_method,
                    self._meta(module, step),
                )
            if (
                not cfg.cartography
                and cfg.do_valid
                and self.dev is not None
                and step % cfg.valid_interval == 0
            ):
                self.validate(trainer, module, step)
        if trainer.world_size > 1:  # early stop is decided on rank 0; every rank must stop at the same step
            trainer.should_stop = bool(trainer.strategy.broadcast(trainer.should_stop, src=0))
        epochs = module.samples_seen * module.world // len(module.train_split)
        while module.state["epochs_done"] < epochs:
            module.state["epochs_done"] += 1
            if cfg.cartography and trainer.is_global_zero:
                self.record_cartography(module)

    def validate(self, trainer, module: T5TaskModule, step: int) -> None:
        res = evaluate_split(
            module.model,
            self.dev,
            module.tokenizer,
            self.metric,
            self.cfg.predict_batch_size,
            self.cfg.eval_mode,
            self.cfg.max_output_length,
            self.scorer,
        )
        if trainer.training:
            module.log_dict({"dev_metric": res.metric, "dev_loss": res.loss}, on_step=True, prog_bar=True)
        if res.metric >= module.state["best"]:
            module.state["best"] = res.metric
            module.state["bad_validations"] = 0
            save_checkpoint(
                self.job_dir / "checkpoint-best",
                module.model,
                self.cfg.tune_method,
                {**self._meta(module, step), "dev_performance": res.metric},
                same_as=self.job_dir / f"checkpoint@{step}",  # saved at this step already: stored once
            )
        else:
            module.state["bad_validations"] += 1
            if 0 < self.cfg.early_stop <= module.state["bad_validations"]:
                log.info(
                    f"early stop at step {step}: {module.state['bad_validations']} non-improving validations"
                )
                trainer.should_stop = True

    def record_cartography(self, module: T5TaskModule) -> None:
        acc, conf = cartography_epoch(
            module.model,
            module.train_split,
            module.tokenizer,
            self.metric,
            self.scorer,
            self.cfg.predict_batch_size,
            self.cfg.eval_mode,
            self.cfg.max_output_length,
        )
        data = json.loads(self.carto_path.read_text()) if self.carto_path.is_file() else {}
        for i, (a, c) in enumerate(zip(acc, conf, strict=True)):
            entry = data.setdefault(str(i), {"acc": [], "confidence": []})
            entry["acc"].append(a)
            entry["confidence"].append(c)
        tmp = self.carto_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.carto_path)
        log.info(f"cartography: epoch {len(data['0']['acc'])} recorded in {self.carto_path}")


def _label_map(spec: str) -> dict[str, str]:
    if not spec:
        return {}
    out = {}
    for part in spec.split(","):
        k, _, v = part.partition(":")
        out[k.strip()] = v.strip()
    return out


def job_dirs(cfg) -> list[tuple[float, int, Path]]:
    """(lr, bsz, run folder) of each job: `--output_dir` itself for one (lr, bsz); a sweep over
    `--learning_rate_list`/`--bsz_list` gets one sub-folder per job, named by its values and the seed."""
    out = Path(cfg.output_dir)
    jobs = [(lr, bsz) for lr in cfg.learning_rate_list for bsz in cfg.bsz_list]
    if len(jobs) == 1:
        return [(*jobs[0], out)]
    return [(lr, bsz, out / job_name(lr, bsz, cfg.seed)) for lr, bsz in jobs]


SWEEP_COLUMNS = ["lr", "bsz", "seed", "task", "metric", "dev_performance", "test_performance", "run"]


def write_sweep_table(out: Path, rows: list[dict[str, Any]]) -> None:
    """`<output_dir>/results.csv` (a column per swept value and the seed) and `results.json`: the rows already
    there from other seeds or values are kept, a rerun of the same job replaces its row."""
    table = out / "results.csv"
    kept = []
    if table.is_file():
        with table.open(newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if r.get("run") not in {row["run"] for row in rows}]
    merged = kept + [{k: row[k] for k in SWEEP_COLUMNS} for row in rows]
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(merged)
    (out / "results.json").write_text(json.dumps(merged, indent=1, default=str))


def run_train(cfg) -> dict[str, Any]:
    if not cfg.task_dir or not cfg.model:
        raise LmlabError("--task_dir and --model are required")
    out = Path(cfg.output_dir)
    jobs = job_dirs(cfg)
    if len(jobs) == 1:
        refuse_finished(out, cfg.overwrite)
    task_name = task_name_of(cfg.task_dir)
    metric = metric_for_task(task_name, cfg.metric or None)
    tokenizer = load_tokenizer(cfg.tokenizer_path or cfg.model)
    opts = TextTaskOptions(
        cfg.max_input_length, cfg.max_output_length, cfg.do_lowercase, cfg.append_another_bos
    )
    train_examples = load_split(cfg.task_dir, "train", datasplit=cfg.datasplit)
    label_map = _label_map(cfg.cartography_label_map)
    if label_map:
        for ex in train_examples:
            ex.answers = [label_map.get(a, a) for a in ex.answers]
    train_split = EncodedSplit(train_examples, tokenizer, task_name, opts)
    dev = None
    if cfg.do_valid or cfg.do_predict:
        dev = EncodedSplit(
            load_split(cfg.task_dir, "dev", choose_1000=cfg.choose_dev_1000), tokenizer, task_name, opts
        )
    scorer = None
    if cfg.eval_mode == "rank" or cfg.cartography:
        scorer = CandidateScorer(
            tokenizer, label_candidates(train_examples), cfg.do_lowercase, cfg.append_another_bos
        )
    if cfg.do_predict:
        load_split(cfg.task_dir, "test")  # a missing or malformed test split fails now, not after training
    initial = _initial_model(cfg)  # the model and --init_path are checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if cfg.save_init:
        save_checkpoint(cfg.save_init, initial, cfg.tune_method, {"step": 0, "seed": cfg.seed})
    rows = []
    for lr, bsz, job_dir in jobs:
        model = initial if initial is not None else _initial_model(cfg)
        initial = None
        row = _train_job(
            cfg, lr, bsz, job_dir, model, tokenizer, task_name, metric, train_split, dev, scorer, opts
        )
        rows.append({**row, "seed": cfg.seed, "task": task_name, "metric": metric})
    if len(jobs) > 1:
        write_sweep_table(out, rows)
    print(f"results in {out}")
    return {k: v for k, v in rows[-1].items() if k != "run"} if rows else {}


def _initial_model(cfg):
    """The seeded model; with --SGD_noise the saved initial state replaces the delta (or all) weights."""
    model = build_for_method(cfg, seed=cfg.seed)
    if cfg.SGD_noise:
        init = cfg.init_path or str(Path(cfg.output_dir) / f"init_seed_{cfg.load_init_seed}")
        tensors, _ = load_checkpoint(init)
        load_into(model, tensors, cfg.tune_method, init)
    return model


def _train_job(
    cfg, lr, bsz, job_dir: Path, model, tokenizer, task_name, metric, train_split, dev, scorer, opts
) -> dict[str, Any]:
    row = {"lr": lr, "bsz": bsz, "dev_performance": 0.0, "test_performance": 0.0, "run": str(job_dir)}
    if job_dir != Path(cfg.output_dir) and is_done(job_dir) and not cfg.overwrite:
        log.info(f"{job_dir} finished already (DONE); skipping")
        return {**row, **json.loads((job_dir / "results.json").read_text()), "run": str(job_dir)}
    if is_done(job_dir):
        clear_finished_run(job_dir)  # --overwrite: train again from the start
    job_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = max(1, math.ceil(len(train_split) / bsz))
    total = min(cfg.max_steps, cfg.train_epochs * steps_per_epoch)
    carto = job_dir / "cartography.json" if cfg.cartography else None
    callback = JobCallback(job_dir, cfg, dev, metric, scorer, carto)
    trainer = build_trainer(
        cfg,
        job_dir,
        callbacks=[callback],
        max_steps=total,
        gradient_clip_val=cfg.max_grad_norm if cfg.max_grad_norm > 0 else None,
        use_distributed_sampler=False,
    )
    # bsz is the global batch per update: each of the world_size processes reads bsz / world_size of it in
    # --accumulate_grad_batches micro-batches
    world, accum = trainer.world_size, cfg.accumulate_grad_batches
    if bsz % (world * accum):
        raise LmlabError(
            f"--bsz_list {bsz} is not divisible by {world} process(es) x --accumulate_grad_batches {accum}"
        )
    module = T5TaskModule(cfg, model, tokenizer, train_split, lr, bsz // (world * accum), total)
    module.world = world
    ckpt = resume_checkpoint(cfg, job_dir)
    if ckpt is None and carto is not None and carto.is_file():
        carto.unlink()  # a fresh cartography run starts a fresh record
    trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    if not trainer.is_global_zero:
        return row  # under ddp every rank runs this script: only rank 0 saves, validates and predicts
    model = module.model.cpu()
    best_dir = job_dir / "checkpoint-best"
    if dev is not None and cfg.do_valid and not best_dir.is_dir():
        callback.validate(trainer, module, trainer.global_step)
    final = {**callback._meta(module, trainer.global_step), "lr": lr, "bsz": bsz}
    if best_dir.is_dir():
        row["dev_performance"] = json.loads((best_dir / "meta.json").read_text()).get("dev_performance", 0.0)
    if cfg.do_predict:
        last = None
        if best_dir.is_dir():
            last = {k: v.clone() for k, v in delta_state(model, cfg.tune_method).items()}
            tensors, _ = load_checkpoint(best_dir)
            load_into(model, tensors, cfg.tune_method, str(best_dir))
        test = EncodedSplit(
            load_split(cfg.task_dir, "test", choose_1000=cfg.choose_test_1000), tokenizer, task_name, opts
        )
        res = evaluate_split(
            model,
            test,
            tokenizer,
            metric,
            cfg.predict_batch_size,
            cfg.eval_mode,
            cfg.max_output_length,
            scorer,
        )
        row["test_performance"] = res.metric
        if last is not None:  # model/ holds the weights of the last update
            load_into(model, last, cfg.tune_method, "the last update")
    if cfg.tune_method == "model" and not cfg.keep_best_model and best_dir.is_dir():
        import shutil

        shutil.rmtree(best_dir)
    results = {
        "task": task_name, "metric": metric, "lr": lr, "bsz": bsz, "seed": cfg.seed,
        "step": trainer.global_step, "dev_performance": row["dev_performance"],
        "test_performance": row["test_performance"],
    }  # fmt: skip
    text = (
        f"`{cfg.tune_method}` tuning of {cfg.model} on {task_name} ({metric}): dev is checkpoint-best's score, "
        "test is checkpoint-best on the test split; model/ holds the weights of the last update."
    )
    finish_run(
        job_dir,
        results,
        results_report(f"mode-connectivity train: {job_dir.name}", results, text),
        export=lambda folder: export_model(folder, model, tokenizer, cfg.tune_method, final),
    )
    log.info(f"{job_dir.name}: dev {row['dev_performance']:.4f} test {row['test_performance']:.4f}")
    return row
