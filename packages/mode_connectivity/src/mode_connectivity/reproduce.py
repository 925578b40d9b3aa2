"""`demo` and `reproduce` (spec §11): the paper's experiments scaled down to a tiny T5 on synthetic tasks.

Every step calls the same subcommands a user would (in-process through `cli.main`) and is skipped when its
output exists, so a rerun resumes. Tiny runs show the machinery; they are not evidence for the paper's claims.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.logging import get_logger

log = get_logger("mode-connectivity")

PAPER = {
    "FT, different seeds": "linearly connected (no barrier) on MNLI/ReCoRD/ANLI",
    "adapter, different seeds": "mostly connected; delta tuning shows worse linear connectivity than FT",
    "FT, different steps": "connected; later checkpoints are flatter",
    "adapter, different steps": "connected",
    "FT, disjoint data halves": "connected (data overlap does not matter much)",
    "FT, same-domain tasks (eval task 1)": "connected for MNLI-ANLI: knowledge of the same domain transfers",
    "FT, same-domain tasks (eval task 2)": "connected for MNLI-ANLI",
    "adapter curve (Bezier, 1 bend)": "a trained curve removes the barrier of the straight line",
}


def _run(argv: list[str]) -> None:
    from mode_connectivity.cli import main

    log.info("mode-connectivity " + " ".join(argv))
    rc = main(argv)
    if rc != 0:
        raise LmlabError(f"step failed (exit {rc}): mode-connectivity {' '.join(argv)}")


class Plan:
    def __init__(
        self, out: Path, model: str, tasks: dict[str, str], steps: int, every: int, points: int, device: str
    ):
        self.out, self.model, self.tasks = out, model, tasks
        self.steps, self.every, self.points, self.device = steps, every, points, device
        self.common = ["--max_input_length", "64", "--max_output_length", "8", "--predict_batch_size", "64",
                       "--eval_mode", "rank", "--device", device]  # fmt: skip

    def train(self, name: str, task: str, method: str, seed: int, lr: float, *extra: str) -> Path:
        job = self.out / "runs" / name / f"lr_{lr}_bsz_16_seed_{seed}"
        if not (job / "DONE").is_file():
            _run([
                "train", "--task_dir", self.tasks[task], "--model", self.model, "--tune_method", method,
                "--adapter_size", "12", "--learning_rate_list", str(lr), "--bsz_list", "16", "--train_iters",
                str(self.steps), "--valid_interval", str(self.every), "--output_interval", str(self.every),
                "--seed", str(seed), "--output_dir", str(job), "--progress_bar", "false", "--logger", "none",
                "--log_every_n_steps", "50", *self.common, *extra,
            ])  # fmt: skip
        return job

    def interpolate(self, name: str, task: str, method: str, p1: Path, p2: Path, *extra: str) -> Path:
        out = self.out / "interpolate" / name
        if not (out / "results.json").is_file():
            _run([
                "interpolate", "--task_dir", self.tasks[task], "--model", self.model, "--tune_method", method,
                "--adapter_size", "12", "--load_PET_path_1", str(p1), "--load_PET_path_2", str(p2),
                "--itpl_points", str(self.points), "--output_dir", str(out), *self.common, *extra,
            ])  # fmt: skip
        return out


def _row(name: str, summary_dir: Path, split: str = "dev") -> dict[str, Any]:
    s = json.loads((summary_dir / "results.json").read_text())[split]
    return {
        "experiment": name,
        "metric(0)": s["metric"][0],
        "metric(1)": s["metric"][-1],
        "min metric": min(s["metric"]),
        "perf_barrier": s["perf_barrier"],
        "loss_barrier": s["loss_barrier"],
        "connected": s["connected"],
        "plot": str(summary_dir / "path.png"),
    }


def _table(rows: list[dict[str, Any]], out: Path) -> str:
    lines = [
        "| experiment | metric a=0 | metric a=1 | min on path | perf_barrier | loss_barrier | connected | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plot = Path(r["plot"]).relative_to(out)
        lines.append(
            f"| [{r['experiment']}]({plot}) | {r['metric(0)']:.3f} | {r['metric(1)']:.3f} | {r['min metric']:.3f} | "
            f"{r['perf_barrier']:.3f} | {r['loss_barrier']:.3f} | {r['connected']} | {PAPER.get(r['experiment'], '')} |"
        )
    return "\n".join(lines) + "\n"


def _overview_plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for r in rows:
        s = json.loads((Path(r["plot"]).parent / "results.json").read_text())
        ax1.plot(s["grid"], s["dev"]["metric"], marker="o", markersize=2, label=r["experiment"])
        ax2.plot(s["grid"], s["dev"]["loss"], marker="o", markersize=2, label=r["experiment"])
    ax1.set_xlabel("a (t for the curve)")
    ax1.set_ylabel("dev accuracy")
    ax2.set_xlabel("a (t for the curve)")
    ax2.set_ylabel("dev loss")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "paths.png")
    plt.close(fig)


def run_reproduce(cfg) -> dict[str, Any]:
    from lmlab.device import set_threads, torch_device

    t_start = time.time()
    out = Path(cfg.output_dir)
    if torch_device(cfg.device).type == "cpu":
        set_threads(1)  # the tiny model is faster on one thread than on contended cores
    if cfg.model:
        if not cfg.task_root:
            raise LmlabError("--model needs --task_root (a folder with glue-mnli/ and anli/)")
        model = cfg.model
        tasks = {"t1": str(Path(cfg.task_root) / "glue-mnli"), "t2": str(Path(cfg.task_root) / "anli")}
        out.mkdir(parents=True, exist_ok=True)
    else:
        tiny = out / "tiny"
        if not (tiny / "model" / "config.json").is_file():
            _run(["make-tiny", "--output_dir", str(tiny), "--n_train", "1000", "--n_eval", "200"])
        model = str(tiny / "model")
        tasks = {"t1": str(tiny / "data" / "tiny-nli"), "t2": str(tiny / "data" / "tiny-nli2")}
    plan = Plan(out, model, tasks, cfg.steps, cfg.checkpoint_every, cfg.itpl_points, cfg.device)
    ft_lr, ad_lr = 1e-3, 1e-2
    last, early = f"checkpoint@{cfg.steps}", f"checkpoint@{cfg.checkpoint_every}"
    ft = {s: plan.train(f"ft_seed{s}", "t1", "model", s, ft_lr) for s in (20, 30)}
    ad = {s: plan.train(f"adapter_seed{s}", "t1", "adapter", s, ad_lr) for s in (20, 30)}
    halves = {
        h: plan.train(f"ft_{h}", "t1", "model", 20, ft_lr, "--datasplit", h) for h in ("split1", "split2")
    }
    ft_t2 = plan.train("ft_task2_seed20", "t2", "model", 20, ft_lr)
    carto_job = plan.train(
        "cartography",
        "t1",
        "adapter",
        20,
        ad_lr,
        "--cartography",
        "--train_epochs",
        "4",
        "--do_predict",
        "false",
    )
    rows = []
    experiments = [
        ("FT, different seeds", "t1", "model", ft[20] / last, ft[30] / last),
        ("adapter, different seeds", "t1", "adapter", ad[20] / last, ad[30] / last),
        ("FT, different steps", "t1", "model", ft[20] / early, ft[20] / last),
        ("adapter, different steps", "t1", "adapter", ad[20] / early, ad[20] / last),
        ("FT, disjoint data halves", "t1", "model", halves["split1"] / last, halves["split2"] / last),
        ("FT, same-domain tasks (eval task 1)", "t1", "model", ft[20] / last, ft_t2 / last),
        ("FT, same-domain tasks (eval task 2)", "t2", "model", ft[20] / last, ft_t2 / last),
    ]
    for name, task, method, p1, p2 in experiments:
        slug = name.lower().replace(",", "").replace("(", "").replace(")", "").replace(" ", "_")
        rows.append(_row(name, plan.interpolate(slug, task, method, p1, p2)))
    curve_dir = out / "curve" / "adapter_seeds"
    if not (curve_dir / "results.json").is_file():
        _run([
            "curve", "--task_dir", tasks["t1"], "--model", model, "--tune_method", "adapter", "--adapter_size", "12",
            "--load_stage1_pet_path_list", str(ad[20] / last), str(ad[30] / last), "--bend_num", "1",
            "--bsz_list", "16", "--learning_rate_list", "1e-2", "--train_iters", str(cfg.curve_steps),
            "--valid_interval", str(max(1, cfg.curve_steps // 3)), "--itpl_points", str(cfg.itpl_points),
            "--output_dir", str(curve_dir), "--progress_bar", "false", "--logger", "none", *plan.common,
        ])  # fmt: skip
    rows.append(_row("adapter curve (Bezier, 1 bend)", curve_dir))
    # knowledge along the path: train-set analysis at 6 points + cartography statistics of the flipped examples
    know = plan.interpolate(
        "knowledge_on_train",
        "t1",
        "adapter",
        ad[20] / last,
        ad[30] / last,
        "--itp_on_train",
        "--itpl_points",
        "6",
    )
    carto_txt = out / "cartography" / "forgotten.txt"
    if not carto_txt.is_file():
        _run([
            "cartography-process", "--cartography_path", str(carto_job / "cartography.json"),
            "--analysis_path", str(know / "valid_data_analysis.json"), "--save_path", str(carto_txt),
        ])  # fmt: skip
    dists = {}
    for name, kind, p1, p2 in (
        ("FT seeds 20 vs 30", "model", ft[20] / last, ft[30] / last),
        ("adapter seeds 20 vs 30", "adapter", ad[20] / last, ad[30] / last),
        ("FT split1 vs split2", "model", halves["split1"] / last, halves["split2"] / last),
        ("FT task1 vs task2", "model", ft[20] / last, ft_t2 / last),
    ):
        d_dir = out / "distance" / name.replace(" ", "_")
        if not (d_dir / "distance.json").is_file():
            _run(["dist", "--input1", str(p1), "--input2", str(p2), "--type", kind, "--path", str(d_dir)])
        dists[name] = json.loads((d_dir / "distance.json").read_text())
    from mode_connectivity.tools import example_statistics

    stats = example_statistics(json.loads((carto_job / "cartography.json").read_text()))
    baseline = {
        k: sum(v[k] for v in stats.values()) / len(stats)
        for k in ("correctness", "confidence", "variability", "turns")
    }
    _overview_plot(rows, out)
    (out / "barriers.json").write_text(json.dumps(rows, indent=1))
    report = [
        "# Mode connectivity of fine-tuned vs delta-tuned PLMs: scaled-down reproduction",
        "",
        f"Backbone: {'tiny T5 from make-tiny (d_model 64, 2+2 layers, denoising-pretrained 300 steps)' if not cfg.model else cfg.model}; "
        f"tasks: {', '.join(Path(t).name for t in tasks.values())}; {cfg.steps} updates per run, checkpoints every "
        f"{cfg.checkpoint_every}; {cfg.itpl_points}-point grid; dev split; eval mode rank.",
        "Tiny runs show the machinery; they are not evidence for the paper's claims.",
        "",
        _table(rows, out),
        "![paths](paths.png)",
        "",
        "## Distances between endpoints",
        "",
        "| pair | L2 | cosine similarity | N | RMS |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {v['l2']:.4f} | {v['cosine_similarity']:.4f} | {v['n_params']} | {v['rms']:.6f} |"
            for k, v in dists.items()
        ],
        "",
        "## Examples forgotten along the adapter path (train set, 6 points) and their training dynamics",
        "",
        "```",
        carto_txt.read_text().rstrip(),
        "```",
        "",
        "For comparison, all training examples: "
        + ", ".join(f"{k} {v:.4f}" for k, v in baseline.items())
        + ". The paper's question: are the first examples to flip the hard/ambiguous ones (lower confidence, "
        "higher variability, more turns)?",
        "",
        f"Wall time of this (possibly resumed) invocation: {time.time() - t_start:.0f} s.",
    ]
    (out / "REPORT.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"report: {out / 'REPORT.md'}")
    return {"experiments": len(rows)}


def run_demo(cfg) -> dict[str, Any]:
    """A tiny end-to-end run: make-tiny, two fine-tuning runs (seeds 20/30), the straight path between them, a short
    Bezier curve, distances. (Full fine-tuning: on the tiny PLM it learns in ~100 steps, adapters need more.)"""
    from lmlab.device import set_threads

    set_threads(1)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tiny = out / "tiny"
    if not (tiny / "model" / "config.json").is_file():
        _run(["make-tiny", "--output_dir", str(tiny), "--n_train", "320", "--n_eval", "48", "--pretrain_steps", "100",
              "--d_model", "48", "--d_ff", "96"])  # fmt: skip
    model, task = str(tiny / "model"), str(tiny / "data" / "tiny-nli")
    common = [
        "--max_input_length",
        "48",
        "--max_output_length",
        "8",
        "--predict_batch_size",
        "64",
        "--eval_mode",
        "rank",
        "--device",
        "cpu",
    ]
    jobs = {}
    for s in (20, 30):
        run = out / "finetune"
        jobs[s] = run / f"lr_0.001_bsz_16_seed_{s}"
        if not (jobs[s] / "DONE").is_file():
            _run([
                "train", "--task_dir", task, "--model", model, "--tune_method", "model",
                "--learning_rate_list", "1e-3", "--bsz_list", "16", "--train_iters", str(cfg.steps), "--valid_interval",
                str(cfg.steps), "--output_interval", str(cfg.steps), "--seed", str(s), "--output_dir", str(jobs[s]),
                "--progress_bar", "false", "--logger", "none", "--do_predict", "false", *common,
            ])  # fmt: skip
    p1, p2 = jobs[20] / f"checkpoint@{cfg.steps}", jobs[30] / f"checkpoint@{cfg.steps}"
    _run([
        "interpolate", "--task_dir", task, "--model", model, "--tune_method", "model",
        "--load_PET_path_1", str(p1), "--load_PET_path_2", str(p2), "--itpl_points", "11", "--output_dir",
        str(out / "interpolate"), "--do_predict", "false", *common,
    ])  # fmt: skip
    _run([
        "curve", "--task_dir", task, "--model", model, "--tune_method", "model", "--t_samples", "1", "--overwrite", "true",
        "--load_stage1_pet_path_list", str(p1), str(p2), "--bend_num", "1", "--bsz_list", "16", "--train_iters", "30",
        "--valid_interval", "30", "--learning_rate_list", "1e-3", "--itpl_points", "11", "--output_dir",
        str(out / "curve"), "--progress_bar", "false", "--logger", "none", "--do_predict", "false", *common,
    ])  # fmt: skip
    _run(
        [
            "dist",
            "--input1",
            str(p1),
            "--input2",
            str(p2),
            "--type",
            "model",
            "--path",
            str(out / "distance"),
        ]
    )
    line = json.loads((out / "interpolate" / "results.json").read_text())["dev"]
    curve = json.loads((out / "curve" / "results.json").read_text())["dev"]
    print(
        f"demo: straight path dev accuracy {line['metric'][0]:.3f} -> {line['metric'][-1]:.3f} (min {min(line['metric']):.3f}), "
        f"perf_barrier {line['perf_barrier']:.3f}; curve perf_barrier {curve['perf_barrier']:.3f}"
    )
    print(f"demo results in {out} (interpolate/path.png, curve/path.png, distance/distance.txt)")
    return {"perf_barrier_line": line["perf_barrier"], "perf_barrier_curve": curve["perf_barrier"]}
