"""`invariant-lm`: train | eval | export | export-body | bench | demo | reproduce."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lmlab.cli import Command, run_cli

from invariant_lm.config import (
    TRAIN_ALIASES,
    BenchConfig,
    DemoConfig,
    EvalConfig,
    ExportConfig,
    ReproduceConfig,
    TrainConfig,
)

DESCRIPTION = (
    "Invariant language modeling (Peyrard et al., EMNLP 2022): a masked LM body shared by one head per "
    "environment, trained with IRM-games (round-robin; body + head e per update)."
)

COMMANDS = [
    Command("train", TrainConfig, "invariant_lm.commands:run_train", "train an invariant MLM (reference flags accepted)",
            config_package="invariant_lm.configs", aliases=TRAIN_ALIASES),
    Command("eval", EvalConfig, "invariant_lm.commands:run_eval", "perplexity with fixed masks, overall and per head"),
    Command("export", ExportConfig, "invariant_lm.commands:run_export",
            "a standard HF folder (heads folded into one when exact, else the body) + the multi-head model"),
    Command("export-body", ExportConfig, "invariant_lm.commands:run_export_body", "the body as an HF base model"),
    Command("bench", BenchConfig, "invariant_lm.bench:run_bench", "IRM-games update (n heads) vs plain MLM update"),
    Command("demo", DemoConfig, "invariant_lm.demo:run_demo", "tiny end-to-end run on embedded text (< 2 min CPU)"),
    Command("reproduce", ReproduceConfig, "invariant_lm.reproduce:run_reproduce",
            "does IRM-games remove environment-specific noise? ERM, IRM-games, ensembling, 3 seeds: claims.json, report.md"),
]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the reference accepts one JSON file of arguments: `invariant-lm train args.json`
    if len(argv) == 2 and argv[0] == "train" and argv[1].endswith(".json"):
        argv = ["train", "--config", argv[1]]
    return run_cli("invariant-lm", COMMANDS, argv, description=DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
