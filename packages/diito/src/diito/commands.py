"""Small subcommands that only wire a config to a function."""

from __future__ import annotations

import json

from diito.config import ExtractConfig


def run_extract(cfg: ExtractConfig) -> dict:
    from diito.extract import extract
    from diito.trainer import resolve_shipped

    student_config = (
        json.loads(resolve_shipped(cfg.student_config).read_text()) if cfg.student_config else None
    )
    out = extract(
        cfg.teacher_name,
        cfg.dump_checkpoint,
        num_layers=cfg.num_layers,
        layers=cfg.layers,
        student_type=cfg.student_type,
        vocab_transform=cfg.vocab_transform,
        student_config=student_config,
        allow_random_head=cfg.allow_random_head,
    )
    print(f"[diito extract] student saved to {out}")
    return {"path": str(out)}
