"""`headless-lm` console script: one subcommand per reference script, plus bench, demo and reproduce."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lmlab.cli import Command, run_cli

from headless_lm.config import (
    FT_ALIASES,
    PRETRAIN_ALIASES,
    BenchConfig,
    DemoConfig,
    ExportConfig,
    FtGptConfig,
    GlueConfig,
    GptConfig,
    LambadaConfig,
    MlmConfig,
    PreprocessConfig,
    ReproduceConfig,
)

CONFIGS = "headless_lm.configs"


def commands() -> list[Command]:
    return [
        Command(
            "preprocess",
            PreprocessConfig,
            "headless_lm.data:preprocess",
            "tokenise a corpus and pack it into rows of max_seq_len tokens (save_to_disk)",
            CONFIGS,
        ),
        Command(
            "gpt",
            GptConfig,
            "headless_lm.train:run_gpt",
            "causal pre-training: headless (CWT), vanilla (CE) or mixed; batch sizes count sequences",
            CONFIGS,
            PRETRAIN_ALIASES,
        ),
        Command(
            "mlm",
            MlmConfig,
            "headless_lm.train:run_mlm",
            "masked pre-training: headless (CWT), vanilla (CE) or mixed; batch sizes count max_seq_len sequences",
            CONFIGS,
            PRETRAIN_ALIASES,
        ),
        Command(
            "ft-gpt",
            FtGptConfig,
            "headless_lm.train:run_ft_gpt",
            "fine-tune a headless decoder with a head copied from its input embeddings (CE only)",
            CONFIGS,
            FT_ALIASES,
        ),
        Command(
            "export",
            ExportConfig,
            "headless_lm.export:run_export",
            "export a checkpoint as a Hugging Face folder (modes mlm, add_head, lm)",
            CONFIGS,
        ),
        Command(
            "lambada",
            LambadaConfig,
            "headless_lm.eval.lambada:run_lambada",
            "zero-shot LAMBADA-style last-word accuracy and perplexity",
            CONFIGS,
        ),
        Command(
            "glue",
            GlueConfig,
            "headless_lm.eval.glue:run_glue",
            "GLUE fine-tuning protocol of the paper (balanced CE, best epoch, mean over seeds)",
            CONFIGS,
        ),
        Command(
            "bench",
            BenchConfig,
            "headless_lm.bench:run_bench",
            "tokens/s and memory: headless vs vanilla step, and the loss-only CWT vs head+CE benchmark",
            CONFIGS,
        ),
        Command(
            "demo",
            DemoConfig,
            "headless_lm.reproduce:run_demo",
            "reproduce --quick: one seed, tiny sizes, seconds (claims.json and report.md)",
            CONFIGS,
        ),
        Command(
            "reproduce",
            ReproduceConfig,
            "headless_lm.reproduce:run_reproduce",
            "headless vs vanilla on the Brown Corpus, 3 seeds per arm: claims.json and report.md",
            CONFIGS,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "headless-lm",
        commands(),
        argv,
        description="Headless language models with contrastive weight tying (Godey et al., ICLR 2024).",
    )


if __name__ == "__main__":
    sys.exit(main())
