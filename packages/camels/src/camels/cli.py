"""The `camels` console script: qa-pretrain, meta-train, eval, bench, make-synthetic, demo, reproduce."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lmlab.cli import Command, run_cli

from camels.config import (
    BenchConfig,
    DemoConfig,
    EvalConfig,
    MetaTrainConfig,
    QaPretrainConfig,
    ReproduceConfig,
    SyntheticConfig,
)


def _make_synthetic(cfg: SyntheticConfig) -> dict:
    from camels.data import make_synthetic

    out = make_synthetic(cfg.output_dir, cfg.seed, n_qa=cfg.n_qa, n_meta=cfg.n_meta, n_test=cfg.n_test)
    print(f"[camels make-synthetic] wrote {out}")
    return {"output_dir": str(out)}


ALIASES = {"grad_acc_steps": "accumulate_grad_batches"}

COMMANDS = [
    Command(
        "qa-pretrain",
        QaPretrainConfig,
        "camels.qa_pretrain:run_qa_pretrain",
        "fine-tune a causal LM on QA pairs",
        "camels.configs",
        ALIASES,
    ),
    Command(
        "meta-train",
        MetaTrainConfig,
        "camels.meta_train:run_meta_train",
        "meta-train the CaMeLS weighting model",
        "camels.configs",
        ALIASES,
    ),
    Command(
        "eval",
        EvalConfig,
        "camels.evaluate:run_eval",
        "online adaptation on a document stream, then closed-book QA",
        "camels.configs",
    ),
    Command(
        "bench",
        BenchConfig,
        "camels.bench:run_bench",
        "meta-step time/memory (unroll padded, unroll, adjoint), adaptation and generation speed",
    ),
    Command("make-synthetic", SyntheticConfig, _make_synthetic, "write the synthetic dataset"),
    Command(
        "demo",
        DemoConfig,
        "camels.reproduce:run_demo",
        "tiny end-to-end run: `reproduce --quick` (one seed, tiny sizes, ~30 s on CPU)",
    ),
    Command(
        "reproduce",
        ReproduceConfig,
        "camels.reproduce:run_reproduce",
        "controlled reproduction: CaMeLS vs uniform / SSM / TF-IDF and the oracle, 3 seeds (results/camels)",
    ),
]


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "camels",
        COMMANDS,
        argv,
        description="CaMeLS: meta-learned token loss weights for online adaptation (Hu et al., 2023)",
    )


if __name__ == "__main__":
    sys.exit(main())
