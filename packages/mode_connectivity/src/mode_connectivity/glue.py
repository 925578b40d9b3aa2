"""RoBERTa GLUE path (spec §3, §7): `glue-train` (full fine-tuning or a bottleneck adapter) and
`glue-interpolate` with a head policy for endpoints trained on different label spaces.

Data: read by `lmlab.glue.read_glue`: a raw GLUE task folder as distributed (`train.tsv`, `dev.tsv` /
`dev_matched.tsv`, the original columns, string labels such as `entailment`), files with the Hugging Face
columns (`validation.csv`, ...), or a `datasets.save_to_disk` folder.
Adapter (OpenDelta's default placement, reimplemented with hooks): a bottleneck h + up(act(down(h))) on the
output of every layer's attention output projection and FFN output projection, bottleneck 24; trainable =
adapters + layer norms + classifier. Init (our choice, not OpenDelta's exact one): down ~ N(0, 0.01), up = 0,
zero biases, so the untrained adapter is the identity.
Checkpoints `checkpoint-<N>/` (every `--save_steps`) hold the full state dict (safetensors, tied copies once) +
meta.json; the run's `model/` export (the last weights) is read the same way by glue-interpolate.
Fixes relative to the reference: it rebuilt three models from disk at each of the 26 points; here the model is
built once and the interpolated tensors are written in place; the output projection is selected by name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lmlab.config import config_to_dict, save_config
from lmlab.errors import LmlabError
from lmlab.glue import GlueSplit, eval_splits, read_glue
from lmlab.io import finish_run, is_done, prepare_run_dir, refuse_finished, results_report
from lmlab.logging import get_logger
from lmlab.metrics import glue_metrics
from lmlab.seed import seed_everything
from lmlab.training import StepSampler, build_trainer, compile_module, param_groups, resume_checkpoint
from torch import nn
from torch.utils.data import DataLoader

from mode_connectivity.models import clear_finished_run
from mode_connectivity.sweep import InterpolationSweep, interpolation_grid

log = get_logger("mode-connectivity")

NUM_LABELS = {"cola": 2, "mnli": 3, "mrpc": 2, "qnli": 2, "qqp": 2, "rte": 2, "sst2": 2, "stsb": 1, "wnli": 2}
HEAD_OUT = ("classifier.out_proj.weight", "classifier.out_proj.bias")
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "pearson", "mrpc": "f1", "qqp": "f1"}
ADAPTERS = "adapters.safetensors"  # the adapter tensors of an adapter run's model/ export


def load_glue_split(data_dir: str | Path, task: str, split: str, limit: int = 0) -> GlueSplit:
    """One labelled split through lmlab.glue.read_glue: a raw GLUE task folder (`train.tsv`, `dev.tsv`, string
    labels), files with the Hugging Face columns, or a `save_to_disk` folder; `limit` keeps the first rows."""
    data = read_glue(data_dir, task, split, max_rows=limit or None)
    if data.labels is None:
        raise LmlabError(f"{data.source} has no label column; {task} {split} needs labels")
    return data


def encode(data: GlueSplit, tokenizer, max_len: int) -> list[dict[str, Any]]:
    enc = tokenizer(data.texts_a, data.texts_b, truncation=True, max_length=max_len)
    return [{"input_ids": ids, "label": lab} for ids, lab in zip(enc["input_ids"], data.labels, strict=True)]


def collate_glue(items, pad_id: int, regression: bool) -> dict[str, torch.Tensor]:
    n = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        ids[i, : len(x["input_ids"])] = torch.tensor(x["input_ids"])
        mask[i, : len(x["input_ids"])] = 1
    labels = torch.tensor([x["label"] for x in items], dtype=torch.float if regression else torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ------------------------------------------------------------------------------------------------ adapter


class BottleneckAdapter(nn.Module):
    def __init__(self, d: int, r: int):
        super().__init__()
        self.adapter_down = nn.Linear(d, r)
        self.adapter_up = nn.Linear(r, d)
        self.act = nn.GELU()
        nn.init.normal_(self.adapter_down.weight, std=0.01)
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.adapter_up(self.act(self.adapter_down(h)))


def _hook(module, args, output):
    return module.adapter(output)


def add_roberta_adapters(model: nn.Module, r: int = 24) -> int:
    count = 0
    d = model.config.hidden_size
    for name, module in model.named_modules():
        if name.endswith("attention.output.dense") or (
            name.endswith("output.dense") and ".attention." not in name
        ):
            if ".layer." not in name:
                continue
            module.adapter = BottleneckAdapter(d, r)
            module.register_forward_hook(_hook)
            count += 1
    return count


def set_trainable(model: nn.Module, delta_type: str, unfrozen: list[str]) -> None:
    if delta_type == "none":
        for p in model.parameters():
            p.requires_grad_(True)
        return
    keys = []
    if "deltas" in unfrozen:
        keys.append("adapter_")
    if "layer_norm" in unfrozen or "final_layer_norm" in unfrozen:
        keys.append("LayerNorm")
    if "classifier" in unfrozen:
        keys.append("classifier.")
    for n, p in model.named_parameters():
        p.requires_grad_(any(k in n for k in keys))


def _not_the_load_report(record: logging.LogRecord) -> bool:
    return " LOAD REPORT" not in str(record.getMessage())


def build_glue_model(
    model_dir: str,
    num_labels: int,
    delta_type: str,
    bottleneck: int,
    seed: int | None = None,
    attn_implementation: str = "sdpa",
    device: str = "auto",
):
    from lmlab.device import resolve_accelerator, resolve_attn_implementation
    from transformers import AutoModelForSequenceClassification

    if not Path(model_dir).is_dir():
        raise LmlabError(f"--model_name_or_path {model_dir} is not a local model directory")
    attn = resolve_attn_implementation(attn_implementation, resolve_accelerator(device))
    if seed is not None:
        seed_everything(seed)
    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(_not_the_load_report)  # the expected keys are said in one line below
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=num_labels,
            ignore_mismatched_sizes=True,
            attn_implementation=attn,
            output_loading_info=True,
        )
    finally:
        report.removeFilter(_not_the_load_report)
    new = sorted(
        {k.rsplit(".", 1)[0] for k in [*info["missing_keys"], *(m[0] for m in info["mismatched_keys"])]}
    )
    unused = sorted({k.split(".")[0] for k in info["unexpected_keys"]})
    if new or unused:
        log.info(
            f"{model_dir}: new (random) {', '.join(new) or 'nothing'} for {num_labels} label(s)"
            + (f"; unused checkpoint weights: {', '.join(unused)}" if unused else "")
        )
    if delta_type == "adapter":
        add_roberta_adapters(model, bottleneck)
    return model


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from mode_connectivity.models import unique_state as us

    return us(model)[0]


def save_glue_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in unique_state(model).items()}
    save_file(tensors, str(path / "weights.safetensors"), metadata={"kind": "glue"})
    (path / "meta.json").write_text(json.dumps({"kind": "glue", **meta}, indent=1, default=str))


def export_glue_model(folder: Path, model: nn.Module, tokenizer, meta: dict[str, Any]) -> None:
    """A glue-train run's `model/`: `save_pretrained` (AutoModelForSequenceClassification loads the fine-tuned
    model; for an adapter run, the trained layer norms and head without the adapters), the tokenizer, meta.json,
    and for an adapter run `adapters.safetensors` (the adapter tensors). `--path1/--path2 <run>/model` read it."""
    from safetensors.torch import save_file

    state = unique_state(model)
    adapters = {k: v.detach().cpu().contiguous() for k, v in state.items() if "adapter_" in k}
    model.save_pretrained(folder, state_dict={k: v for k, v in state.items() if k not in adapters})
    tokenizer.save_pretrained(folder)
    if adapters:
        save_file(adapters, str(folder / ADAPTERS), metadata={"kind": "glue"})
    (folder / "meta.json").write_text(json.dumps({"kind": "glue", **meta}, indent=1, default=str))


def load_glue_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a `checkpoint-<N>` folder or a glue-train run's `model/` export."""
    from safetensors.torch import load_file

    path = Path(path)
    files = [path / "weights.safetensors"] if (path / "weights.safetensors").is_file() else []
    if not files and (path / "model.safetensors").is_file():
        files = [path / "model.safetensors", *[f for f in [path / ADAPTERS] if f.is_file()]]
    if not files or not (path / "meta.json").is_file():
        raise LmlabError(f"{path} is not a glue-train checkpoint (checkpoint-<N>/ or model/ with meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("kind") != "glue":
        raise LmlabError(f"{path} is a {meta.get('kind')!r} checkpoint, not a glue-train one")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors, meta


@torch.no_grad()
def evaluate_glue(model, encoded, task: str, batch_size: int, pad_id: int) -> tuple[dict[str, float], float]:
    model.eval()
    device = next(model.parameters()).device
    regression = task == "stsb"
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    preds, labels, losses = [0] * len(encoded), [0] * len(encoded), []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = {
            k: v.to(device) for k, v in collate_glue([encoded[i] for i in idx], pad_id, regression).items()
        }
        out = model(**batch)
        losses.append(float(out.loss))
        p = out.logits.squeeze(-1).tolist() if regression else out.logits.argmax(-1).tolist()
        for j, i in enumerate(idx):
            preds[i], labels[i] = p[j], encoded[i]["label"]
    return glue_metrics(task, preds, labels), (sum(losses) / len(losses) if losses else 0.0)


# ------------------------------------------------------------------------------------------------ train


class GlueModule(pl.LightningModule):
    def __init__(self, cfg, model, train_items, pad_id: int):
        super().__init__()
        self.cfg, self.model, self.train_items, self.pad_id = (
            cfg,
            compile_module(model, cfg.compile),
            train_items,
            pad_id,
        )
        self.samples_seen = 0

    def training_step(self, batch, batch_idx):
        self.samples_seen += batch["input_ids"].shape[0]
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self):
        groups = param_groups(self.model, self.cfg.weight_decay)  # no decay on biases and layer norms
        opt = torch.optim.AdamW(groups, lr=self.cfg.learning_rate)
        if not self.cfg.warmup_steps:
            return opt
        from transformers import get_scheduler

        sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=self.cfg.warmup_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        sampler = StepSampler(len(self.train_items), seed=self.cfg.seed, start=self.samples_seen)
        regression = self.cfg.task_name == "stsb"
        return DataLoader(
            self.train_items, batch_size=self.cfg.per_device_train_batch_size, sampler=sampler,
            collate_fn=lambda b: collate_glue(b, self.pad_id, regression),
        )  # fmt: skip

    def on_save_checkpoint(self, checkpoint):
        checkpoint["samples_seen"] = self.samples_seen

    def on_load_checkpoint(self, checkpoint):
        self.samples_seen = int(checkpoint.get("samples_seen", 0))


class GlueCallback(pl.Callback):
    def __init__(self, cfg, out: Path, evals: dict[str, list], pad_id: int):
        self.cfg, self.out, self.evals, self.pad_id = cfg, out, evals, pad_id
        self.last = 0

    def meta(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "step": step, "task_name": cfg.task_name, "num_labels": NUM_LABELS[cfg.task_name],
            "delta_type": cfg.delta_type, "bottleneck_dim": cfg.bottleneck_dim,
            "model_name_or_path": cfg.model_name_or_path, "args": config_to_dict(cfg),
        }  # fmt: skip

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.last or not trainer.is_global_zero:
            return
        self.last = step
        if step % self.cfg.save_steps == 0 and step < trainer.max_steps:  # the last step is model/
            save_glue_checkpoint(self.out / f"checkpoint-{step}", module.model, self.meta(step))
        if step % self.cfg.eval_steps == 0:
            for split, items in self.evals.items():
                metrics, loss = evaluate_glue(
                    module.model, items, self.cfg.task_name, self.cfg.per_device_eval_batch_size, self.pad_id
                )
                module.log_dict({f"{split}_{k}": v for k, v in metrics.items()} | {f"{split}_loss": loss})
            module.model.train()  # evaluate_glue left it in eval mode


def run_glue_train(cfg) -> dict[str, Any]:
    from transformers import AutoTokenizer

    out = Path(cfg.output_dir)
    if not cfg.data_dir:
        raise LmlabError("--data_dir is required (a local GLUE task folder)")
    if not Path(cfg.model_name_or_path).is_dir():
        raise LmlabError(f"--model_name_or_path {cfg.model_name_or_path} is not a local model directory")
    tok = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    train = encode(load_glue_split(cfg.data_dir, cfg.task_name, "train"), tok, cfg.max_seq_length)
    evals = {
        s: encode(
            load_glue_split(cfg.data_dir, cfg.task_name, s, cfg.max_eval_samples), tok, cfg.max_seq_length
        )
        for s in eval_splits(cfg.task_name)
    }
    model = build_glue_model(
        cfg.model_name_or_path, NUM_LABELS[cfg.task_name], cfg.delta_type, cfg.bottleneck_dim, cfg.seed,
        cfg.attn_implementation, cfg.device,
    )  # fmt: skip
    set_trainable(model, cfg.delta_type, cfg.unfrozen_modules)
    refuse_finished(out, cfg.overwrite)
    if is_done(out):
        clear_finished_run(out)  # --overwrite: train again from the start
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    module = GlueModule(cfg, model, train, tok.pad_token_id)
    callback = GlueCallback(cfg, out, evals, tok.pad_token_id)
    trainer = build_trainer(cfg, out, callbacks=[callback], use_distributed_sampler=False)
    trainer.fit(module, ckpt_path=resume_checkpoint(cfg, out), weights_only=True)
    if not trainer.is_global_zero:
        return {}
    results: dict[str, Any] = {"task": cfg.task_name, "step": trainer.global_step}
    for split, items in evals.items():
        metrics, loss = evaluate_glue(
            module.model, items, cfg.task_name, cfg.per_device_eval_batch_size, tok.pad_token_id
        )
        results[split] = {**metrics, "loss": loss}
    text = f"{cfg.delta_type} tuning of {cfg.model_name_or_path} on {cfg.task_name}; model/ holds the last weights."
    finish_run(
        out,
        results,
        results_report("mode-connectivity glue-train", results, text),
        export=lambda folder: export_glue_model(
            folder, module.model.cpu(), tok, callback.meta(trainer.global_step)
        ),
    )
    print(json.dumps(results))
    return results


# ------------------------------------------------------------------------------------------------ interpolate


def glue_sweep(cfg):
    """Build the eval-task model once, copy the kept head, and return (model, sweep, eval_task, policy, model_dir).
    Everything but `classifier.out_proj` moves when the head is taken from one endpoint."""
    t1, m1 = load_glue_checkpoint(cfg.path1)
    t2, m2 = load_glue_checkpoint(cfg.path2)
    if m1.get("delta_type") != m2.get("delta_type"):
        raise LmlabError(
            f"--path1 is delta_type {m1.get('delta_type')!r} but --path2 is {m2.get('delta_type')!r}"
        )
    eval_task = cfg.eval_task or cfg.task_name
    policy = cfg.head_policy
    same_space = m1["num_labels"] == m2["num_labels"]
    if policy == "auto":
        policy = "interpolate" if same_space else "from_eval_task"
    if policy == "interpolate" and not same_space:
        raise LmlabError(
            "the endpoints have different label spaces; use --head_policy from_eval_task|from_1|from_2"
        )
    if policy == "from_eval_task":
        owners = [i for i, m in ((1, m1), (2, m2)) if m["task_name"] == eval_task]
        if not owners:
            raise LmlabError(
                f"neither endpoint was trained on --eval_task {eval_task}; use --head_policy from_1|from_2"
            )
        policy = f"from_{owners[0]}"
    head_src = {"from_1": t1, "from_2": t2}.get(policy)
    head_meta = {"from_1": m1, "from_2": m2}.get(policy, m1)
    num_labels = head_meta["num_labels"]
    if num_labels != NUM_LABELS[eval_task]:
        raise LmlabError(
            f"the head kept ({num_labels} labels) does not fit --eval_task {eval_task} ({NUM_LABELS[eval_task]})"
        )
    model_dir = cfg.model_name_or_path or m1["model_name_or_path"]
    model = build_glue_model(model_dir, num_labels, m1["delta_type"], m1["bottleneck_dim"], device=cfg.device)
    from lmlab.device import torch_device

    from mode_connectivity.models import check_same_keys

    model.to(torch_device(cfg.device)).eval()
    live = unique_state(model)
    moving = [k for k in t1 if not (head_src is not None and k in HEAD_OUT)]
    check_same_keys({k: t1[k] for k in moving}, {k: t2[k] for k in moving}, cfg.path1, cfg.path2)
    if set(t1) != set(live):
        raise LmlabError(f"{cfg.path1} does not match the model built from {model_dir} (different tensors)")
    with torch.no_grad():
        if head_src is not None:
            for k in HEAD_OUT:
                live[k].copy_(head_src[k])
    sweep = InterpolationSweep(
        {k: live[k] for k in moving}, {k: t1[k] for k in moving}, {k: t2[k] for k in moving}
    )
    return model, sweep, eval_task, policy, model_dir


def run_glue_interpolate(cfg) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from mode_connectivity.barriers import barrier_metrics
    from mode_connectivity.interpolate import plot_path

    out = Path(cfg.output_dir)
    refuse_finished(out, cfg.overwrite)
    model, sweep, eval_task, policy, model_dir = glue_sweep(cfg)
    tok = AutoTokenizer.from_pretrained(model_dir)
    evals = {
        s: encode(load_glue_split(cfg.data_dir, eval_task, s, cfg.max_eval_samples), tok, cfg.max_seq_length)
        for s in eval_splits(eval_task)
    }
    prepare_run_dir(out, cfg.overwrite)
    save_config(cfg, out / "config.yaml")
    grid = interpolation_grid(cfg.itpl_points)
    main_key = MAIN_METRIC.get(eval_task, "accuracy")
    series: dict[str, dict[str, list[float]]] = {s: {"metric": [], "loss": []} for s in evals}
    rows = []
    for a in grid:
        sweep.set(a)
        row: dict[str, Any] = {"x": a}
        for s, items in evals.items():
            metrics, loss = evaluate_glue(
                model, items, eval_task, cfg.per_device_eval_batch_size, tok.pad_token_id
            )
            series[s]["metric"].append(metrics[main_key])
            series[s]["loss"].append(loss)
            row[s] = {**metrics, "loss": loss}
        rows.append(row)
    first = eval_splits(eval_task)[0]
    import csv

    with (out / "result.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prefix", "metric", "x", "dev_performance", "dev_loss", "test_performance", "test_loss"])
        for a, r in zip(grid, rows, strict=True):
            w.writerow(
                [
                    eval_task,
                    main_key,
                    a,
                    f"{r[first][main_key]:.4f}",
                    f"{r[first]['loss']:.4f}",
                    "0.0000",
                    "0.0000",
                ]
            )
        n = len(rows)
        w.writerow(
            [
                "average",
                main_key,
                "",
                f"{sum(series[first]['metric']) / n:.4f}",
                f"{sum(series[first]['loss']) / n:.4f}",
                "0.0000",
                "0.0000",
            ]
        )
    summary: dict[str, Any] = {
        "eval_task": eval_task,
        "head_policy": policy,
        "metric": main_key,
        "grid": grid,
        "rows": rows,
    }
    for s, v in series.items():
        summary[s] = {**v, **barrier_metrics(grid, v["metric"], v["loss"], cfg.barrier_tol)}
    plot_path(out / "path.png", grid, {"dev": summary[first]}, main_key, "interpolation coefficient a")
    text = f"Endpoints `{cfg.path1}` and `{cfg.path2}`; {eval_task} ({main_key}), head {policy}."
    finish_run(out, summary, results_report("mode-connectivity glue-interpolate", summary, text))
    print(f"{eval_task} ({policy}): {main_key} {series[first]['metric'][0]:.4f} -> {series[first]['metric'][-1]:.4f}, "
          f"perf_barrier {summary[first]['perf_barrier']:.4f}; results in {out}")  # fmt: skip
    return {"perf_barrier": summary[first]["perf_barrier"], "loss_barrier": summary[first]["loss_barrier"]}
