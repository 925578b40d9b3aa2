"""`mode-connectivity` console script: one subcommand per reference script (heavy imports inside each)."""

from __future__ import annotations

import sys

from lmlab.cli import Command, run_cli

from mode_connectivity.config import (
    CURVE_ALIASES,
    TRAIN_ALIASES,
    BenchConfig,
    CartographyProcessConfig,
    CurveConfig,
    DemoConfig,
    DistConfig,
    EvaluateConfig,
    InterpolateConfig,
    LayerMixConfig,
    MakeTinyConfig,
    ReproduceConfig,
    TrainConfig,
)
from mode_connectivity.glue_config import GlueInterpolateConfig, GlueTrainConfig

PKG = "mode_connectivity"

COMMANDS = [
    Command(
        "train",
        TrainConfig,
        f"{PKG}.train:run_train",
        "fine-tune / adapter-, LoRA- or prefix-tune T5 on a CrossFit task",
        f"{PKG}.configs",
        TRAIN_ALIASES,
    ),
    Command(
        "evaluate",
        EvaluateConfig,
        f"{PKG}.interpolate:run_evaluate",
        "evaluate one checkpoint (or the bare PLM) on dev/test",
        f"{PKG}.configs",
    ),
    Command(
        "interpolate",
        InterpolateConfig,
        f"{PKG}.interpolate:run_interpolate",
        "evaluate the straight path between two checkpoints",
        f"{PKG}.configs",
    ),
    Command(
        "curve",
        CurveConfig,
        f"{PKG}.curve_train:run_curve",
        "train a Bezier/polychain curve between two checkpoints and evaluate along it",
        f"{PKG}.configs",
        CURVE_ALIASES,
    ),
    Command(
        "layer-mix",
        LayerMixConfig,
        f"{PKG}.layer_mix:run_layer_mix",
        "learn per-block/layer/tensor mixing weights between two checkpoints (optional experiment)",
        f"{PKG}.configs",
        CURVE_ALIASES,
    ),
    Command("dist", DistConfig, f"{PKG}.tools:run_dist", "L2 / cosine distance between two checkpoints"),
    Command(
        "cartography-process",
        CartographyProcessConfig,
        f"{PKG}.tools:run_cartography_process",
        "relate examples forgotten along a path to their training dynamics",
    ),
    Command(
        "glue-train",
        GlueTrainConfig,
        f"{PKG}.glue:run_glue_train",
        "RoBERTa GLUE fine-tuning / adapter tuning (sequence classification)",
        f"{PKG}.configs",
    ),
    Command(
        "glue-interpolate",
        GlueInterpolateConfig,
        f"{PKG}.glue:run_glue_interpolate",
        "interpolate two RoBERTa GLUE checkpoints (head policy for task boundaries)",
        f"{PKG}.configs",
    ),
    Command(
        "bench",
        BenchConfig,
        f"{PKG}.bench:run_bench",
        "time the in-place sweep engine against reloading per point",
        f"{PKG}.configs",
    ),
    Command(
        "make-tiny",
        MakeTinyConfig,
        f"{PKG}.make_tiny:run_make_tiny",
        "build a random tiny T5 (+ RoBERTa), a local tokenizer and synthetic tasks",
    ),
    Command("demo", DemoConfig, f"{PKG}.reproduce:run_demo", "a tiny end-to-end run in about a minute"),
    Command(
        "reproduce",
        ReproduceConfig,
        f"{PKG}.reproduce:run_reproduce",
        "the scaled-down reproduction (spec §11)",
    ),
]


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        "mode-connectivity",
        COMMANDS,
        argv,
        description="Mode connectivity of pre-trained language models (Qin et al., EMNLP 2022)",
    )


if __name__ == "__main__":
    sys.exit(main())
