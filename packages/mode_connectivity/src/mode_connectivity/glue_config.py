"""Configs of the RoBERTa GLUE path (`glue-train`, `glue-interpolate`); option names mirror the reference's
JSON configs (HF TrainingArguments + OpenDelta keys)."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import check_bounds, option
from lmlab.training import TrainerOptions

GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")
HEAD_POLICIES = ("auto", "interpolate", "from_eval_task", "from_1", "from_2")


@dataclass
class GlueDataOptions:
    task_name: str = option("GLUE task key: " + ", ".join(GLUE_TASKS), "mnli")
    data_dir: str = option(
        "local folder with train/validation[_matched/_mismatched] as csv/jsonl/tsv (or load_from_disk)", ""
    )
    model_name_or_path: str = option(
        "a local RoBERTa directory (e.g. a ckpt_<STEP> pre-training checkpoint)", ""
    )
    max_seq_length: int = option("truncate inputs to this many tokens (padded dynamically)", 128, ge=8)
    per_device_eval_batch_size: int = option("evaluation batch size", 64, ge=1)
    max_eval_samples: int = option("evaluate only the first N validation examples (0: all)", 0, ge=0)

    def check_data(self) -> None:
        if self.task_name not in GLUE_TASKS:
            raise ValueError(f"--task_name must be one of {', '.join(GLUE_TASKS)}, not {self.task_name!r}")


@dataclass
class GlueTrainConfig(GlueDataOptions, TrainerOptions):
    output_dir: str = option("the run folder: checkpoint-<N> folders, model/, results.json", "runs/glue")
    delta_type: str = option(
        "none (full fine-tuning) | adapter (bottleneck after attention and FFN outputs)", "none"
    )
    bottleneck_dim: int = option("adapter bottleneck", 24, ge=1)
    unfrozen_modules: list[str] = option(
        "trainable with --delta_type adapter", ["deltas", "layer_norm", "final_layer_norm", "classifier"]
    )
    learning_rate: float = option("AdamW learning rate (reference: 5e-5 FT, 3e-4 adapters)", 5e-5, gt=0)
    weight_decay: float = option("AdamW weight decay", 0.0, ge=0)
    per_device_train_batch_size: int = option("batch size", 32, ge=1)
    max_steps: int = option("updates (MNLI 50k, SST-2 15k in the reference)", 50000, ge=1)
    eval_steps: int = option("evaluate every N updates", 10000, ge=1)
    save_steps: int = option("save checkpoint-<N> every N updates", 10000, ge=1)
    seed: int = option("seed", 20)
    warmup_steps: int = option("linear warm-up steps (reference: none)", 0, ge=0)
    log_every_n_steps: int = option("log every N updates", 50, ge=1)

    def __post_init__(self) -> None:
        TrainerOptions.__post_init__(self)
        self.check_data()
        if self.delta_type not in ("none", "adapter"):
            raise ValueError("--delta_type must be none or adapter")


@dataclass
class GlueInterpolateConfig(GlueDataOptions):
    path1: str = option("checkpoint-<N> folder of endpoint 1 (a=0)", "")
    path2: str = option("checkpoint-<N> folder of endpoint 2 (a=1)", "")
    eval_task: str = option("task evaluated along the path (default --task_name)", "")
    head_policy: str = option(
        "auto (interpolate when label spaces match, else from_eval_task) | interpolate | from_eval_task | from_1 | from_2",
        "auto",
    )
    itpl_points: int = option("grid points (26 hard-coded in the reference)", 26, ge=2)
    output_dir: str = option("result.csv, results.json, report.md, path.png", "runs/glue-interpolate")
    barrier_tol: float = option("connected = perf_barrier <= this", 0.01, ge=0)
    device: str = option("auto | cpu | cuda", "auto")
    overwrite: bool = option("run again into an --output_dir that holds a finished run (DONE)", False)

    def __post_init__(self) -> None:
        check_bounds(self)
        self.check_data()
        if self.head_policy not in HEAD_POLICIES:
            raise ValueError(f"--head_policy must be one of {', '.join(HEAD_POLICIES)}")
        if not self.path1 or not self.path2:
            raise ValueError("--path1 and --path2 are required")
        if self.eval_task and self.eval_task not in GLUE_TASKS:
            raise ValueError(f"--eval_task must be one of {', '.join(GLUE_TASKS)}")
