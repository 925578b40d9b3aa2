"""`evaluate` and `interpolate` (reference `task_interpolation.py`), and the path outputs shared with `curve`:
result.csv, per-example analysis along the path, solution analysis, barrier summary and plots (spec §6, §10).

The model is built once, each split tokenised and batched once (sorted by length, dynamic padding), both
endpoints loaded once; every grid point writes the interpolated tensors in place (sweep.py) and evaluates.
Each end is evaluated once (the reference did both ends twice).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lmlab.config import save_config
from lmlab.errors import LmlabError
from lmlab.io import finish_run, prepare_run_dir, refuse_finished, results_report
from lmlab.logging import get_logger

from mode_connectivity.barriers import barrier_metrics
from mode_connectivity.data import (
    EncodedSplit,
    TextTaskOptions,
    eval_batches,
    label_candidates,
    load_split,
    task_name_of,
)
from mode_connectivity.evaluation import CandidateScorer, EvalResult, evaluate_split
from mode_connectivity.metrics import metric_for_task
from mode_connectivity.models import (
    build_for_method,
    check_kind,
    check_same_keys,
    delta_state,
    load_checkpoint,
    load_into,
    load_tokenizer,
)
from mode_connectivity.sweep import InterpolationSweep, interpolation_grid

log = get_logger("mode-connectivity")
RESULT_HEADER = ["prefix", "metric", "x", "dev_performance", "dev_loss", "test_performance", "test_loss"]


def eval_device(device: str = "auto") -> torch.device:
    from lmlab.device import torch_device

    return torch_device(device)


@dataclass
class EvalContext:
    """Everything an evaluation needs, built once: model, tokenizer, tokenised splits and their batches."""

    cfg: Any
    model: torch.nn.Module
    tokenizer: Any
    task_name: str
    metric: str
    splits: dict[str, EncodedSplit]
    batches: dict[str, list]
    scorer: CandidateScorer | None

    @classmethod
    def build(
        cls, cfg, splits: tuple[str, ...] | None = None, model: torch.nn.Module | None = None
    ) -> EvalContext:
        if not cfg.task_dir:
            raise LmlabError("--task_dir is required")
        task_name = task_name_of(cfg.task_dir)
        metric = metric_for_task(task_name, cfg.metric or None)
        tokenizer = load_tokenizer(cfg.tokenizer_path or cfg.model)
        if model is None:
            model = build_for_method(cfg, seed=getattr(cfg, "seed", None))
            model.to(eval_device(getattr(cfg, "device", "auto")))
        model.eval()
        opts = TextTaskOptions(
            cfg.max_input_length, cfg.max_output_length, cfg.do_lowercase, cfg.append_another_bos
        )
        if splits is None:
            splits = []
            if getattr(cfg, "itp_on_train", False):
                splits.append("train")
            elif cfg.do_valid:
                splits.append("dev")
            if cfg.do_predict and not getattr(cfg, "itp_on_train", False):
                splits.append("test")
        encoded = {}
        for split in splits:
            choose = (
                cfg.choose_dev_1000 if split == "dev" else cfg.choose_test_1000 if split == "test" else False
            )
            encoded[split] = EncodedSplit(
                load_split(cfg.task_dir, split, choose_1000=choose), tokenizer, task_name, opts
            )
        scorer = None
        if cfg.eval_mode == "rank":
            cands = label_candidates(load_split(cfg.task_dir, "train"))
            scorer = CandidateScorer(tokenizer, cands, cfg.do_lowercase, cfg.append_another_bos)
        batches = {s: eval_batches(e, cfg.predict_batch_size) for s, e in encoded.items()}
        return cls(cfg, model, tokenizer, task_name, metric, encoded, batches, scorer)

    def evaluate(self) -> dict[str, EvalResult]:
        use_bf16 = bool(self.cfg.bf16) and next(self.model.parameters()).device.type == "cuda"
        return {
            split: evaluate_split(
                self.model,
                enc,
                self.tokenizer,
                self.metric,
                self.cfg.predict_batch_size,
                self.cfg.eval_mode,
                self.cfg.max_output_length,
                self.scorer,
                use_bf16,
                self.batches[split],
            )
            for split, enc in self.splits.items()
        }


def load_endpoint(path: str, tune_method: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = load_checkpoint(path)
    check_kind(meta, tune_method, path)
    return tensors, meta


# ------------------------------------------------------------------------------------------------ evaluate


def run_evaluate(cfg) -> dict[str, Any]:
    out_dir = Path(cfg.output_dir)
    refuse_finished(out_dir, cfg.overwrite)
    ctx = EvalContext.build(cfg)
    if cfg.load_PET_path:
        tensors, _ = load_endpoint(cfg.load_PET_path, cfg.tune_method)
        load_into(ctx.model, tensors, cfg.tune_method, cfg.load_PET_path)
    prepare_run_dir(out_dir, cfg.overwrite)
    save_config(cfg, out_dir / "config.yaml")
    results = ctx.evaluate()
    summary: dict[str, Any] = {"task": ctx.task_name, "metric": ctx.metric, "checkpoint": cfg.load_PET_path}
    for split, r in results.items():
        summary[f"{split}_performance"] = r.metric
        summary[f"{split}_loss"] = r.loss
        print(f"{split}: {ctx.metric} = {r.metric:.4f}  loss = {r.loss:.4f}")
    with (out_dir / "predictions.json").open("w") as fh:
        json.dump({s: r.predictions for s, r in results.items()}, fh)
    text = f"`{cfg.load_PET_path or 'the bare model'}` on {ctx.task_name} ({ctx.metric}); predictions.json beside."
    finish_run(out_dir, summary, results_report("mode-connectivity evaluate", summary, text))
    return summary


# ------------------------------------------------------------------------------------------------ path outputs


def data_analysis(grid: list[float], scores: list[list[float]]) -> dict[str, dict[str, list[int]]]:
    """Per grid point: example indices with raw score exactly 0 / exactly 1 / higher / lower than at the
    previous point (at the first point up = score > 0, down empty)."""
    out = {}
    prev: list[float] | None = None
    for a, s in zip(grid, scores, strict=True):
        zero = [i for i, v in enumerate(s) if v == 0]
        one = [i for i, v in enumerate(s) if v == 1]
        if prev is None:
            up = [i for i, v in enumerate(s) if v > 0]
            down: list[int] = []
        else:
            up = [i for i, (v, p) in enumerate(zip(s, prev, strict=True)) if v > p]
            down = [i for i, (v, p) in enumerate(zip(s, prev, strict=True)) if v < p]
        out[str(a)] = {"zero_list": zero, "one_list": one, "up_list": up, "down_list": down}
        prev = s
    return out


def analysis_text(grid: list[float], scores: list[list[float]], analysis: dict) -> str:
    lines = ["x\tzero\tone\tup\tdown\tup_to_one\tdown_to_zero"]
    prev = None
    for a, s in zip(grid, scores, strict=True):
        d = analysis[str(a)]
        if prev is None:
            up_to_one = sum(v == 1 for v in s)
            down_to_zero = 0
        else:
            up_to_one = sum(v == 1 and p < 1 for v, p in zip(s, prev, strict=True))
            down_to_zero = sum(v == 0 and p > 0 for v, p in zip(s, prev, strict=True))
        lines.append(
            f"{a}\t{len(d['zero_list'])}\t{len(d['one_list'])}\t{len(d['up_list'])}\t{len(d['down_list'])}\t"
            f"{up_to_one}\t{down_to_zero}"
        )
        prev = s
    return "\n".join(lines) + "\n"


def write_path_outputs(
    out_dir: Path,
    grid: list[float],
    rows: list[dict[str, EvalResult]],
    task_name: str,
    metric: str,
    tol: float,
    xlabel: str = "interpolation coefficient a",
    best_row: bool = False,
    write_csv: bool = True,
) -> dict[str, Any]:
    """result.csv, *_data_analysis.json, data_analyze.txt, solution_analysis.txt, path.png; returns the summary
    that the caller writes as results.json (lmlab.io.finish_run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = list(rows[0]) if rows else []

    def val(r: dict[str, EvalResult], split: str, what: str) -> float:
        return getattr(r[split], what) if split in r else 0.0

    csv_rows = []
    for a, r in zip(grid, rows, strict=True):
        csv_rows.append(
            [
                task_name,
                metric,
                a,
                val(r, "dev", "metric"),
                val(r, "dev", "loss"),
                val(r, "test", "metric"),
                val(r, "test", "loss"),
            ]
        )
    n = len(csv_rows)
    means = [sum(row[i] for row in csv_rows) / n for i in range(3, 7)]
    summary: dict[str, Any] = {"task": task_name, "metric": metric, "grid": grid}
    for split in ("dev", "test", "train"):
        if split not in splits:
            continue
        ms = [r[split].metric for r in rows]
        ls = [r[split].loss for r in rows]
        summary[split] = {
            "metric": ms,
            "loss": ls,
            "average_metric": sum(ms) / n,
            "average_loss": sum(ls) / n,
            "best_metric": max(ms),
            "best_x": grid[max(range(n), key=lambda i: ms[i])],
            "above_both_ends": [a for a, m in zip(grid, ms, strict=True) if m > ms[0] and m > ms[-1]],
            **barrier_metrics(grid, ms, ls, tol),
        }
    if write_csv:
        with (out_dir / "result.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(RESULT_HEADER)
            for row in csv_rows:
                w.writerow([row[0], row[1], f"{row[2]}", *[f"{v:.4f}" for v in row[3:]]])
            w.writerow(["average", metric, "", *[f"{v:.4f}" for v in means]])
            if best_row and "dev" in splits:
                k = max(range(n), key=lambda i: rows[i]["dev"].metric)
                row = csv_rows[k]
                w.writerow([task_name, f"{metric}_best", f"{row[2]}", *[f"{v:.4f}" for v in row[3:]]])
    for split, fname in (("dev", "valid"), ("train", "valid"), ("test", "test")):
        if split not in splits:
            continue
        scores = [r[split].scores for r in rows]
        analysis = data_analysis(grid, scores)
        if split == "train":
            analysis = {
                k: {"zero_list": v["zero_list"], "one_list": v["one_list"]} for k, v in analysis.items()
            }
        (out_dir / f"{fname}_data_analysis.json").write_text(json.dumps(analysis))
        if split != "train":
            with (out_dir / "data_analyze.txt").open("a") as fh:
                fh.write(f"# {split}\n" + analysis_text(grid, scores, data_analysis(grid, scores)))
    sol = []
    for split in ("dev", "test"):
        if split in summary:
            s = summary[split]
            sol.append(
                f"{split}: points above both ends: {s['above_both_ends']}; best {metric} {s['best_metric']:.4f} at "
                f"x={s['best_x']}; average {s['average_metric']:.4f}; perf_barrier {s['perf_barrier']:.4f} "
                f"(a={s['perf_barrier_argmax_a']}); loss_barrier {s['loss_barrier']:.4f}; "
                f"min_drop {s['min_drop']:.4f}; connected {s['connected']}"
            )
    (out_dir / "solution_analysis.txt").write_text("\n".join(sol) + "\n")
    plot_path(out_dir / "path.png", grid, summary, metric, xlabel)
    return summary


def plot_path(path: Path, grid: list[float], summary: dict[str, Any], metric: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in ("dev", "test", "train") if s in summary]
    if not splits:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for s in splits:
        ax1.plot(grid, summary[s]["metric"], marker="o", markersize=3, label=s)
        ax2.plot(grid, summary[s]["loss"], marker="o", markersize=3, label=s)
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel(metric)
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ interpolate


def run_interpolate(cfg) -> dict[str, Any]:
    out_dir = Path(cfg.output_dir)
    refuse_finished(out_dir, cfg.overwrite)
    grid = interpolation_grid(cfg.itpl_points)
    theta1, _ = load_endpoint(cfg.load_PET_path_1, cfg.tune_method)
    theta2, _ = load_endpoint(cfg.load_PET_path_2, cfg.tune_method)
    check_same_keys(theta1, theta2, cfg.load_PET_path_1, cfg.load_PET_path_2)
    ctx = EvalContext.build(cfg)
    sweep = InterpolationSweep(delta_state(ctx.model, cfg.tune_method), theta1, theta2)
    prepare_run_dir(out_dir, cfg.overwrite)
    save_config(cfg, out_dir / "config.yaml")
    rows = []
    from tqdm import tqdm

    for a in tqdm(grid, desc="interpolate", leave=False):
        sweep.set(a)
        rows.append(ctx.evaluate())
    summary = write_path_outputs(
        out_dir, grid, rows, ctx.task_name, ctx.metric, cfg.barrier_tol, write_csv=not cfg.itp_on_train
    )
    for split in ("dev", "test"):
        if split in summary:
            s = summary[split]
            print(
                f"{split}: {ctx.metric} {s['metric'][0]:.4f} -> {s['metric'][-1]:.4f}, min {min(s['metric']):.4f}; "
                f"perf_barrier {s['perf_barrier']:.4f}  loss_barrier {s['loss_barrier']:.4f}  connected {s['connected']}"
            )
    finish_run(
        out_dir, summary, path_report("interpolate", summary, cfg.load_PET_path_1, cfg.load_PET_path_2)
    )
    print(f"results in {out_dir}")
    return {
        k: v
        for k, v in summary.get("dev", summary.get("train", {})).items()
        if k in ("perf_barrier", "loss_barrier")
    }


def path_report(command: str, summary: dict[str, Any], end1: str, end2: str) -> str:
    """report.md of a path: the endpoints and the scalar results (barriers, averages, best point)."""
    text = f"Endpoints: `{end1}` and `{end2}`; {summary['task']} ({summary['metric']}), {len(summary['grid'])} points."
    return results_report(f"mode-connectivity {command}", summary, text)
