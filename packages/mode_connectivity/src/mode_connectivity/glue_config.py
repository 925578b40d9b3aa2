"""Configs of the RoBERTa GLUE path (`glue-train`, `glue-interpolate`); option names mirror the reference's
JSON configs (HF TrainingArguments + OpenDelta keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.config import check_bounds
from lmlab.training import TrainerOptions

GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")
HEAD_POLICIES = ("auto", "interpolate", "from_eval_task", "from_1", "from_2")


def _h(default, text, **bounds):
    """A field with its help text and its declared range (gt, ge, lt, le; checked by lmlab.config.check_bounds)."""
    return field(default=default, metadata={"help": text, **bounds})


@dataclass
class GlueDataOptions:
    task_name: str = _h("mnli", "GLUE task key: " + ", ".join(GLUE_TASKS))
    data_dir: str = _h(
        "", "local folder with train/validation[_matched/_mismatched] as csv/jsonl/tsv (or load_from_disk)"
    )
    model_name_or_path: str = _h("", "a local RoBERTa directory (e.g. a ckpt_<STEP> pre-training checkpoint)")
    max_seq_length: int = _h(128, "truncate inputs to this many tokens (padded dynamically)", ge=8)
    per_device_eval_batch_size: int = _h(64, "evaluation batch size", ge=1)
    max_eval_samples: int = _h(0, "evaluate only the first N validation examples (0: all)", ge=0)

    def check_data(self) -> None:
        if self.task_name not in GLUE_TASKS:
            raise ValueError(f"--task_name must be one of {', '.join(GLUE_TASKS)}, not {self.task_name!r}")


@dataclass
class GlueTrainConfig(GlueDataOptions, TrainerOptions):
    output_dir: str = _h("runs/glue", "the run folder: checkpoint-<N> folders, model/, results.json")
    delta_type: str = _h(
        "none", "none (full fine-tuning) | adapter (bottleneck after attention and FFN outputs)"
    )
    bottleneck_dim: int = _h(24, "adapter bottleneck", ge=1)
    unfrozen_modules: list[str] = field(
        default_factory=lambda: ["deltas", "layer_norm", "final_layer_norm", "classifier"],
        metadata={"help": "trainable with --delta_type adapter"},
    )
    learning_rate: float = _h(5e-5, "AdamW learning rate (reference: 5e-5 FT, 3e-4 adapters)", gt=0)
    weight_decay: float = _h(0.0, "AdamW weight decay", ge=0)
    per_device_train_batch_size: int = _h(32, "batch size", ge=1)
    max_steps: int = _h(50000, "updates (MNLI 50k, SST-2 15k in the reference)", ge=1)
    eval_steps: int = _h(10000, "evaluate every N updates", ge=1)
    save_steps: int = _h(10000, "save checkpoint-<N> every N updates", ge=1)
    seed: int = _h(20, "seed")
    warmup_steps: int = _h(0, "linear warm-up steps (reference: none)", ge=0)
    log_every_n_steps: int = _h(50, "log every N updates", ge=1)

    def __post_init__(self) -> None:
        TrainerOptions.__post_init__(self)
        self.check_data()
        if self.delta_type not in ("none", "adapter"):
            raise ValueError("--delta_type must be none or adapter")


@dataclass
class GlueInterpolateConfig(GlueDataOptions):
    path1: str = _h("", "checkpoint-<N> folder of endpoint 1 (a=0)")
    path2: str = _h("", "checkpoint-<N> folder of endpoint 2 (a=1)")
    eval_task: str = _h("", "task evaluated along the path (default --task_name)")
    head_policy: str = _h(
        "auto",
        "auto (interpolate when label spaces match, else from_eval_task) | interpolate | from_eval_task | from_1 | from_2",
    )
    itpl_points: int = _h(26, "grid points (26 hard-coded in the reference)", ge=2)
    output_dir: str = _h("runs/glue-interpolate", "result.csv, results.json, report.md, path.png")
    barrier_tol: float = _h(0.01, "connected = perf_barrier <= this", ge=0)
    device: str = _h("auto", "auto | cpu | cuda")

    def __post_init__(self) -> None:
        check_bounds(self)
        self.check_data()
        if self.head_policy not in HEAD_POLICIES:
            raise ValueError(f"--head_policy must be one of {', '.join(HEAD_POLICIES)}")
        if not self.path1 or not self.path2:
            raise ValueError("--path1 and --path2 are required")
        if self.eval_task and self.eval_task not in GLUE_TASKS:
            raise ValueError(f"--eval_task must be one of {', '.join(GLUE_TASKS)}")
