"""The `diito` console script: one entry point, one subcommand per step of the reference's pipeline."""

from __future__ import annotations

import sys

from lmlab.cli import Command, run_cli

from diito import config as c

COMMANDS = [
    Command(
        "binarize",
        c.BinarizeConfig,
        "diito.data.commands:run_binarize",
        "tokenise a corpus into a .npz token file",
    ),
    Command(
        "combine",
        c.CombineConfig,
        "diito.data.commands:run_combine",
        "concatenate and shuffle binarized files",
    ),
    Command(
        "token-counts",
        c.TokenCountsConfig,
        "diito.data.commands:run_token_counts",
        "count every vocab id (MLM smoothing)",
    ),
    Command(
        "extract", c.ExtractConfig, "diito.commands:run_extract", "initialise a student from teacher layers"
    ),
    Command(
        "train",
        c.TrainConfig,
        "diito.trainer:run_train",
        "distil a student (DIITO: + interchange intervention losses)",
        config_package="diito.configs",
        aliases=c.TRAIN_ALIASES,
    ),
    Command(
        "bench",
        c.BenchConfig,
        "diito.bench:run_bench",
        "time a DIITO step against a standard distillation step",
    ),
    Command("eval-mlm", c.EvalMlmConfig, "diito.eval.mlm:run_eval_mlm", "masked-LM perplexity of a model"),
    Command(
        "eval-glue",
        c.EvalGlueConfig,
        "diito.eval.glue:run_eval_glue",
        "fine-tune and evaluate on a GLUE task",
    ),
    Command(
        "eval-ner", c.EvalNerConfig, "diito.eval.ner:run_eval_ner", "fine-tune and evaluate CoNLL-style NER"
    ),
    Command("eval-qa", c.EvalQaConfig, "diito.eval.qa:run_eval_qa", "fine-tune and evaluate SQuAD-style QA"),
    Command("demo", c.DemoConfig, "diito.reproduce:run_demo", "tiny end-to-end run (under 2 minutes on CPU)"),
    Command(
        "reproduce",
        c.ReproduceConfig,
        "diito.reproduce:run_reproduce",
        "scaled-down reproduction of the paper",
    ),
]


def main(argv: list[str] | None = None) -> int:
    return run_cli("diito", COMMANDS, argv, description=__doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
