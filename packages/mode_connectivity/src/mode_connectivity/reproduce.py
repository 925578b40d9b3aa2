"""`demo` and `reproduce`: the paper's experiments scaled down to a tiny T5 (and a tiny RoBERTa) on synthetic tasks.

`reproduce` is a small controlled experiment per claim: every arm is >= 3 pairs of minima (seeds fixed in the
config), each pair's path is evaluated by the same subcommands a user would call (in-process through `cli.main`),
and each claim compares two arms' per-pair values of one path measure with `lmlab.claims`. The sanity arm is
the permuted twin: the straight line between a fine-tuned model and the same function with its hidden units
relabelled (`permute.py`) must dip, else the task and model cannot show a barrier at all. Every run and path is
skipped when its folder is finished (`DONE`), so an interrupted reproduction resumes.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from lmlab.claims import seeds_cell
from lmlab.errors import LmlabError
from lmlab.logging import get_logger

log = get_logger("mode-connectivity")

PAPER = "mode_connectivity"
SANITY = ["permuted_twin_barrier"]
ADAPTER_SIZE = "12"
FT_LR, ADAPTER_LR, GLUE_LR = "1e-3", "1e-2", "1e-3"

# arm -> what it is (the report's design table); every arm is a list of path folders, one per pair of minima
ARMS = {
    "ft_twin": "full FT run of seed s vs its permuted twin (same function, hidden units relabelled): sanity arm",
    "ft_seeds": "full FT from the one tiny PLM, two seeds (data order, dropout)",
    "ft_halves": "full FT, seed s, on the two disjoint halves of the training set (split1 vs split2)",
    "adapter_seeds": "adapters (r 12, init std 0.02), two seeds (adapter init and data order)",
    "adapter_seeds_curve": "the `curve` command (Bezier, 1 bend) between the adapter_seeds pair",
    "adapter_sgd_noise": "adapters from the init of seed s (--SGD_noise) trained with the data order of seed s+100 "
    "vs the seed-s run",
    "adapter_halves": "adapters, seed s (one init), on the two disjoint halves of the training set",
    "adapter08_seeds": "adapters with init std 0.08, two seeds",
    "adapter08_seeds_curve": "the `curve` command between the adapter08_seeds pair",
    "glue_within_task": "tiny RoBERTa (glue-train, full FT) on mnli, two seeds; glue-interpolate on mnli",
    "glue_between_tasks": "tiny RoBERTa, seed s on mnli vs seed s on sst2; glue-interpolate on mnli (mnli head)",
}


def _run(argv: list[str]) -> None:
    from mode_connectivity.cli import main

    log.info("mode-connectivity " + " ".join(argv))
    rc = main(argv)
    if rc != 0:
        raise LmlabError(f"step failed (exit {rc}): mode-connectivity {' '.join(argv)}")


def sizes(cfg) -> dict[str, Any]:
    """The reproduction's sizes; `--quick` is the same code path at one pair per arm and a few steps."""
    if cfg.quick:
        return {"seeds": cfg.seeds[:2], "ft_steps": 4, "adapter_steps": 4, "curve_steps": 2, "glue_steps": 4,
                "points": 3, "n_train": 48, "n_eval": 12,
                "tiny": ["--pretrain_steps", "10", "--d_model", "32", "--d_ff", "64"]}  # fmt: skip
    return {"seeds": cfg.seeds, "ft_steps": cfg.ft_steps, "adapter_steps": cfg.adapter_steps,
            "curve_steps": cfg.curve_steps, "glue_steps": cfg.glue_steps, "points": cfg.itpl_points,
            "n_train": cfg.n_train, "n_eval": cfg.n_eval, "tiny": []}  # fmt: skip


def seed_pairs(seeds: list[int]) -> list[tuple[int, int]]:
    """Pairs of runs for the seed arms: each seed with the next one, cyclically (n seeds give n pairs from n runs;
    two seeds give one pair)."""
    if len(seeds) < 2:
        raise LmlabError("--seeds needs at least two seeds (a pair of minima per path)")
    if len(seeds) == 2:
        return [(seeds[0], seeds[1])]
    return [(seeds[k], seeds[(k + 1) % len(seeds)]) for k in range(len(seeds))]


class Plan:
    """Runs and paths of the reproduction, each in its own folder under `out`, skipped when finished."""

    def __init__(self, out: Path, model: str, task: str, tiny: Path, size: dict[str, Any], device: str):
        self.out, self.model, self.task, self.tiny, self.size = out, model, task, tiny, size
        self.common = ["--max_input_length", "64", "--max_output_length", "8", "--predict_batch_size", "100",
                       "--eval_mode", "rank", "--device", device, "--do_predict", "false"]  # fmt: skip
        self.device = device

    def train(self, arm: str, seed: int, method: str, *extra: str) -> Path:
        """A training run; returns its last checkpoint."""
        run = self.out / "runs" / arm / f"seed_{seed}"
        steps = str(self.size["ft_steps" if method == "model" else "adapter_steps"])
        if not (run / "DONE").is_file():
            _run([
                "train", "--task_dir", self.task, "--model", self.model, "--tune_method", method,
                "--adapter_size", ADAPTER_SIZE, "--learning_rate_list", FT_LR if method == "model" else ADAPTER_LR,
                "--bsz_list", "16", "--train_iters", steps, "--valid_interval", steps, "--output_interval", steps,
                "--seed", str(seed), "--output_dir", str(run), "--progress_bar", "false", "--logger", "none",
                "--log_every_n_steps", "50", *self.common, *extra,
            ])  # fmt: skip
        return run / f"checkpoint@{steps}"

    def line(self, arm: str, name: str, method: str, p1: Path, p2: Path) -> Path:
        path = self.out / "paths" / arm / name
        if not (path / "DONE").is_file():
            _run([
                "interpolate", "--task_dir", self.task, "--model", self.model, "--tune_method", method,
                "--adapter_size", ADAPTER_SIZE, "--load_PET_path_1", str(p1), "--load_PET_path_2", str(p2),
                "--itpl_points", str(self.size["points"]), "--output_dir", str(path), *self.common,
            ])  # fmt: skip
        return path

    def curve(self, arm: str, name: str, p1: Path, p2: Path) -> Path:
        path = self.out / "paths" / arm / name
        steps = str(self.size["curve_steps"])
        if not (path / "DONE").is_file():
            _run([
                "curve", "--task_dir", self.task, "--model", self.model, "--tune_method", "adapter",
                "--adapter_size", ADAPTER_SIZE, "--load_stage1_pet_path_list", str(p1), str(p2), "--bend_num", "1",
                "--bsz_list", "16", "--learning_rate_list", ADAPTER_LR, "--train_iters", steps, "--valid_interval",
                steps, "--itpl_points", str(self.size["points"]), "--output_dir", str(path), "--progress_bar",
                "false", "--logger", "none", *self.common,
            ])  # fmt: skip
        return path

    def glue_train(self, task: str, seed: int) -> Path:
        run = self.out / "runs" / f"glue_{task}" / f"seed_{seed}"
        steps = str(self.size["glue_steps"])
        if not (run / "DONE").is_file():
            _run([
                "glue-train", "--task_name", task, "--data_dir", str(self.tiny / "glue" / task),
                "--model_name_or_path", str(self.tiny / "roberta" / "ckpt_0"), "--learning_rate", GLUE_LR,
                "--max_steps", steps, "--eval_steps", steps, "--save_steps", steps,
                "--per_device_train_batch_size", "16", "--seed", str(seed), "--output_dir", str(run),
                "--device", self.device, "--progress_bar", "false", "--logger", "none",
            ])  # fmt: skip
        return run / "model"

    def glue_line(self, arm: str, name: str, p1: Path, p2: Path) -> Path:
        path = self.out / "paths" / arm / name
        if not (path / "DONE").is_file():
            _run([
                "glue-interpolate", "--task_name", "mnli", "--eval_task", "mnli", "--data_dir",
                str(self.tiny / "glue" / "mnli"), "--model_name_or_path", str(self.tiny / "roberta" / "ckpt_0"),
                "--path1", str(p1), "--path2", str(p2), "--itpl_points", str(self.size["points"]),
                "--output_dir", str(path), "--device", self.device,
            ])  # fmt: skip
        return path


def series(results: dict[str, Any]) -> dict[str, Any]:
    """The dev series of a path's results.json (`interpolate`, `curve`: "dev"; `glue-interpolate`: the eval task's
    first dev split)."""
    if "dev" in results:
        return results["dev"]
    from lmlab.glue import eval_splits

    return results[eval_splits(results["eval_task"])[0]]


MEASURES = {
    "perf_barrier": lambda s: s["perf_barrier"],
    "loss_barrier": lambda s: s["loss_barrier"],
    "min": lambda s: min(s["metric"]),
    "ends": lambda s: (s["metric"][0] + s["metric"][-1]) / 2,
    "mean": lambda s: statistics.fmean(s["metric"]),
}


def values(paths: list[Path], measure: str) -> list[float]:
    """One value per pair, read from each path folder's results.json."""
    return [float(MEASURES[measure](series(json.loads((p / "results.json").read_text())))) for p in paths]


def run_experiments(plan: Plan, seeds: list[int], model_dir: str) -> dict[str, list[Path]]:
    from mode_connectivity.permute import write_permuted_twin

    pairs = seed_pairs(seeds)
    singles = seeds[: len(pairs)]  # the per-seed arms get as many values as the seed-pair arms
    arms: dict[str, list[Path]] = {arm: [] for arm in ARMS}
    ft = {s: plan.train("ft", s, "model") for s in seeds}
    for s in singles:
        twin = plan.out / "runs" / "ft_twin" / f"seed_{s}"
        if not (twin / "weights.safetensors").is_file():
            write_permuted_twin(str(ft[s]), str(twin), model_dir, seed=s)
        arms["ft_twin"].append(plan.line("ft_twin", f"seed_{s}", "model", ft[s], twin))
    for a, b in pairs:
        arms["ft_seeds"].append(plan.line("ft_seeds", f"seeds_{a}_{b}", "model", ft[a], ft[b]))
    for s in singles:
        h1 = plan.train("ft_split1", s, "model", "--datasplit", "split1")
        h2 = plan.train("ft_split2", s, "model", "--datasplit", "split2")
        arms["ft_halves"].append(plan.line("ft_halves", f"seed_{s}", "model", h1, h2))
    for std, arm in (("0.02", "adapter_seeds"), ("0.08", "adapter08_seeds")):
        runs = "adapter" if std == "0.02" else "adapter08"
        ad = {
            s: plan.train(
                runs,
                s,
                "adapter",
                "--r_std",
                std,
                "--save_init",
                str(plan.out / "runs" / "init" / f"{runs}_{s}"),
            )
            for s in seeds
        }
        for a, b in pairs:
            arms[arm].append(plan.line(arm, f"seeds_{a}_{b}", "adapter", ad[a], ad[b]))
            arms[f"{arm}_curve"].append(plan.curve(f"{arm}_curve", f"seeds_{a}_{b}", ad[a], ad[b]))
        if std == "0.02":
            adapters = ad
    for s in singles:
        init = str(plan.out / "runs" / "init" / f"adapter_{s}")
        noisy = plan.train(
            "adapter_sgd_noise", s + 100, "adapter", "--SGD_noise", "true", "--init_path", init
        )
        arms["adapter_sgd_noise"].append(
            plan.line("adapter_sgd_noise", f"seed_{s}", "adapter", adapters[s], noisy)
        )
        h1 = plan.train("adapter_split1", s, "adapter", "--datasplit", "split1")
        h2 = plan.train("adapter_split2", s, "adapter", "--datasplit", "split2")
        arms["adapter_halves"].append(plan.line("adapter_halves", f"seed_{s}", "adapter", h1, h2))
    mnli = {s: plan.glue_train("mnli", s) for s in seeds}
    for a, b in pairs:
        arms["glue_within_task"].append(
            plan.glue_line("glue_within_task", f"seeds_{a}_{b}", mnli[a], mnli[b])
        )
    for s in singles:
        sst2 = plan.glue_train("sst2", s)
        arms["glue_between_tasks"].append(plan.glue_line("glue_between_tasks", f"seed_{s}", mnli[s], sst2))
    return arms


def build_claims(arms: dict[str, list[Path]]):
    from lmlab.claims import Claim

    def v(arm: str, measure: str = "perf_barrier") -> list[float]:
        return values(arms[arm], measure)

    bar = "perf_barrier of dev accuracy"
    return [
        Claim("ft_seeds_connected", "full FT minima from one PLM with different seeds are linearly connected: "
              "a lower line barrier than the permuted twin's", bar, "lower", "FT seeds", "permuted twin",
              v("ft_seeds"), v("ft_twin")),
        Claim("adapter_seeds_barrier", "adapter minima from different seeds have a higher line barrier than full "
              "FT minima from different seeds", bar, "higher", "adapter seeds", "FT seeds",
              v("adapter_seeds"), v("ft_seeds")),
        Claim("curve_removes_barrier", "a Bezier curve trained by `curve` between the adapter seeds' minima has "
              "a lower barrier than their straight line", bar, "lower", "adapter curve", "adapter line",
              v("adapter_seeds_curve"), v("adapter_seeds")),
        Claim("sgd_noise_connected", "adapters from the same init with another data order (SGD noise) have a "
              "lower line barrier than adapters from different inits", bar, "lower", "adapter SGD noise",
              "adapter seeds", v("adapter_sgd_noise"), v("adapter_seeds")),
        Claim("adapter_init_scale", "a larger adapter init (std 0.08 vs 0.02) gives a higher line barrier "
              "between seeds", bar, "higher", "adapter seeds, init 0.08", "adapter seeds, init 0.02",
              v("adapter08_seeds"), v("adapter_seeds")),
        Claim("adapter_init_scale_curve", "with init std 0.08 a trained curve also has a lower barrier than the "
              "line", bar, "lower", "curve, init 0.08", "line, init 0.08",
              v("adapter08_seeds_curve"), v("adapter08_seeds")),
        Claim("ft_data_halves_connected", "full FT minima on disjoint halves of the training data are linearly "
              "connected: a lower line barrier than the permuted twin's", bar, "lower", "FT data halves",
              "permuted twin", v("ft_halves"), v("ft_twin")),
        Claim("adapter_data_halves", "adapter minima from one init on disjoint data halves have a lower line "
              "barrier than adapter minima from different inits", bar, "lower", "adapter data halves",
              "adapter seeds", v("adapter_halves"), v("adapter_seeds")),
        Claim("glue_task_boundary", "RoBERTa (glue-*): along the path from an mnli minimum to an sst2 minimum "
              "the mnli accuracy does not fall along the chord but holds and then drops at a task boundary: a "
              "higher barrier than on the path between two mnli minima", "perf_barrier of mnli dev accuracy (mnli head)", "higher",
              "between tasks", "within a task", v("glue_between_tasks"), v("glue_within_task")),
        Claim("permuted_twin_barrier", "sanity: the straight line between a FT model and its permuted twin "
              "(the same function) dips: its worst dev accuracy is below the endpoints'", "dev accuracy",
              "lower", "worst point on the twin line", "endpoints", v("ft_twin", "min"), v("ft_twin", "ends")),
    ]  # fmt: skip


def _cell(xs: list[float]) -> str:
    return seeds_cell(xs, ".3f", ".3f")


def arms_table(arms: dict[str, list[Path]]) -> str:
    lines = [
        "| arm | pairs | perf_barrier | loss_barrier | accuracy at the ends | worst accuracy on the path | mean accuracy on the path |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, paths in arms.items():
        cells = [_cell(values(paths, m)) for m in ("perf_barrier", "loss_barrier", "ends", "min", "mean")]
        lines.append(f"| `{arm}` | {', '.join(p.name for p in paths)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(claims) -> str:
    """A plain-words paragraph generated from the claims' outcomes (the README adds the analysis of the run)."""
    c = {x.id: x for x in claims}

    def mean(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.3f}"

    twin, ft, ad, cur = (
        c["permuted_twin_barrier"],
        c["ft_seeds_connected"],
        c["adapter_seeds_barrier"],
        c["curve_removes_barrier"],
    )
    parts = [
        f"The sanity arm {'passes' if twin.holds else 'FAILS'}: along the line between a fine-tuned model and its "
        f"permuted twin the worst dev accuracy is {mean(twin.method_values)} against {mean(twin.control_values)} at "
        f"the ends, so this task and model {'can' if twin.holds else 'cannot'} show a barrier.",
        f"Full fine-tuning from the one PLM with different seeds gives a line barrier of {mean(ft.method_values)} "
        f"(twin: {mean(ft.control_values)}): {'linearly connected, as in the paper' if ft.holds else 'not shown to be connected'}.",
        f"Adapters from different seeds give {mean(ad.method_values)}, "
        f"{'higher than full FT, as in the paper' if ad.holds else 'not higher than full FT here'}; a trained Bezier "
        f"curve between them gives {mean(cur.method_values)} "
        f"({'the curve removes the barrier' if cur.holds else 'the curve does not lower it beyond the noise'}).",
    ]
    rest = [x for x in claims if x.id not in {twin.id, ft.id, ad.id, cur.id}]
    parts.append(
        "Of the other claims, "
        + "; ".join(
            f"`{x.id}` {'holds' if x.holds else 'does not hold'} ({mean(x.method_values)} vs "
            f"{mean(x.control_values)})"
            for x in rest
        )  # fmt: skip
        + "."
    )
    return " ".join(parts)


def _plot(arms: dict[str, list[Path]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for arm, paths in arms.items():
        runs = [json.loads((p / "results.json").read_text()) for p in paths]
        curves = [series(r)["metric"] for r in runs]
        mean = [statistics.fmean(col) for col in zip(*curves, strict=True)]
        ax.plot(runs[0]["grid"], mean, marker="o", markersize=2, label=arm)
    ax.set_xlabel("a (t on a curve)")
    ax.set_ylabel("dev accuracy (mean over pairs)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "paths.png")
    plt.close(fig)


def run_reproduce(cfg) -> dict[str, Any]:
    from lmlab.claims import claims_section, write_claims
    from lmlab.device import set_threads, torch_device

    t_start = time.time()
    out = Path(cfg.output_dir)
    size = sizes(cfg)
    if cfg.model and not cfg.task_root:
        raise LmlabError("--model needs --task_root (a folder with glue-mnli/)")
    if torch_device(cfg.device).type == "cpu":
        set_threads(
            1
        )  # deterministic per thread count; the tiny models are fastest on one thread of busy cores
    tiny = out / "tiny"
    if not (tiny / "roberta" / "ckpt_0" / "config.json").is_file():
        _run(["make-tiny", "--output_dir", str(tiny), "--n_train", str(size["n_train"]), "--n_eval",
              str(size["n_eval"]), "--roberta", "true", *size["tiny"]])  # fmt: skip
    model = cfg.model or str(tiny / "model")
    task = str(Path(cfg.task_root) / "glue-mnli") if cfg.model else str(tiny / "data" / "tiny-nli")
    plan = Plan(out, model, task, tiny, size, cfg.device)
    arms = run_experiments(plan, size["seeds"], model)
    claims = build_claims(arms)
    write_claims(PAPER, claims, out)
    _plot(arms, out)
    wall = time.time() - t_start
    backbone = cfg.model or (
        "tiny T5 from make-tiny (d_model 64, 2+2 layers, gated-GELU, denoising-pretrained 300 steps)"
        if not cfg.quick
        else "a smaller tiny T5 (--quick)"
    )
    report = [
        "# Mode connectivity of fine-tuned vs delta-tuned PLMs: scaled-down reproduction",
        "",
        claims_section(claims, sanity=SANITY),
        "## Arms (each value is one pair of minima; mean ± sample std, then every pair)",
        "",
        arms_table(arms),
        "",
        "![mean dev accuracy along each arm's path](paths.png)",
        "",
        "## Design",
        "",
        f"- Backbone: {backbone}. Task `{Path(task).name}`: {size['n_train']} training and {size['n_eval']} dev "
        "examples; the premise holds three cue adverbs, two of the label's class and one of another, among "
        "distractor adjectives, and the label (entailment/neutral/contradiction) is the majority class: any single "
        "cue word is right only 2/3 of the time, so the model has to count.",
        f"- Training: full FT {size['ft_steps']} updates (Adafactor lr {FT_LR}), adapters (r {ADAPTER_SIZE}) "
        f"{size['adapter_steps']} updates (lr {ADAPTER_LR}), batch 16, constant lr; curves: `curve` with one "
        f"Bezier bend, {size['curve_steps']} updates (lr {ADAPTER_LR}). RoBERTa: `make-tiny --roberta` (random "
        f"2-layer, hidden 64), `glue-train` full FT {size['glue_steps']} updates (AdamW lr {GLUE_LR}) on the tiny "
        "mnli (the same counting rule) and sst2 (one sentiment word) folders.",
        f"- Seeds {', '.join(map(str, size['seeds']))} (fixed in the config); seed arms pair each seed with the "
        f"next one cyclically {seed_pairs(size['seeds'])}, per-seed arms use seeds "
        f"{', '.join(map(str, size['seeds'][: len(seed_pairs(size['seeds']))]))}.",
        f"- Paths: {size['points']}-point grid on dev, eval mode rank (score the three labels); "
        "perf_barrier = the largest drop of accuracy below the chord between the ends, loss_barrier the same "
        "for the loss. Claims use `lmlab.claims` (lower/higher: the mean beats the control's by more than "
        "max(std)/sqrt(pairs)).",
        *[f"- `{arm}`: {text}" for arm, text in ARMS.items()],
        "",
        "## Reading",
        "",
        reading(claims),
        "",
        f"Wall time of this (possibly resumed) invocation: {wall:.0f} s, one torch thread.",
    ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"report: {out / 'report.md'}")
    return {"claims": len(claims), "holds": sum(c.holds for c in claims), "wall_s": round(wall, 1)}


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
