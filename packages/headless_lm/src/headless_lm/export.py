"""Export a Lightning checkpoint as a local Hugging Face folder (safetensors, tokenizer, headless_lm.json).

Modes (reference `hf_publisher.py`, which only pushed to the Hub, hard-coded `gpt_neox`/`embed_out` and saved a
headless BERT as a BertForMaskedLM with an Identity head):
- mlm: an encoder; headless -> backbone only (`AutoModel`), vanilla -> the full `...ForMaskedLM`.
- add_head: a headless decoder as `...ForCausalLM` with a head copied from E (logits = h E^T, no training).
- lm: a decoder as trained (vanilla or fine-tuned with ft-gpt).
"""

from __future__ import annotations

import json
from pathlib import Path

from lmlab.errors import LmlabError

from headless_lm.modeling import add_lm_head, is_headless
from headless_lm.train import HeadlessLMModule, load_checkpoint, model_from_checkpoint


def export_checkpoint(ckpt_path: str | Path, output_dir: str | Path, mode: str) -> Path:
    """Write the model of `ckpt_path` to `output_dir` in `mode` (mlm | add_head | lm); returns the folder."""
    if mode not in ("mlm", "add_head", "lm"):
        raise LmlabError(f"mode must be mlm, add_head or lm, got {mode!r}")
    ckpt = load_checkpoint(ckpt_path)
    return export_module(
        model_from_checkpoint(ckpt), output_dir, mode, ckpt.get("global_step"), str(ckpt_path)
    )


def export_module(
    module: HeadlessLMModule, output_dir: str | Path, mode: str, global_step: int | None, source: str
) -> Path:
    """Write the model of a training module to `output_dir` in `mode` (mlm | add_head | lm), with its tokenizer
    and `headless_lm.json`; `source` names the checkpoint it comes from. Returns the folder."""
    hp = module.hparams
    kind = hp["kind"]
    model = module.model
    headless = is_headless(model)
    if mode == "mlm" and kind != "mlm":
        raise LmlabError(f"{source} is a causal (gpt) checkpoint; export it with --mode add_head or lm")
    if mode in ("add_head", "lm") and kind != "clm":
        raise LmlabError(f"{source} is a masked (mlm) checkpoint; export it with --mode mlm")
    if mode == "add_head":
        if not headless:
            raise LmlabError(f"{source} already has an LM head; export it with --mode lm")
        model = add_lm_head(model)
    if mode == "lm" and headless:
        raise LmlabError(f"{source} is headless; use --mode add_head, or fine-tune it with ft-gpt first")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok_path = hp.get("tokenizer")
    if tok_path:
        from headless_lm.data import load_tokenizer

        load_tokenizer(tok_path).save_pretrained(out)
    task = hp["task"]
    info = {
        "mode": mode,
        "kind": kind,
        "headless_pretraining": headless or hp.get("mode") in ("ft", "probe"),
        "training_mode": hp.get("mode", "pretrain"),
        "emb_loss_weight": task.get("emb_loss_weight"),
        "lm_loss_weight": task.get("lm_loss_weight", task.get("mlm_loss_weight")),
        "contrastive_temperature": task.get("contrastive_temperature"),
        "global_step": global_step,
        "source_checkpoint": source,
        "auto_class": type(model).__name__,
    }
    (out / "headless_lm.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def run_export(cfg) -> dict:
    out = export_checkpoint(cfg.model_ckpt, cfg.output_dir, cfg.mode)
    if cfg.push:
        from huggingface_hub import HfApi

        HfApi().upload_folder(folder_path=str(out), repo_id=cfg.hf_name)
    print(f"[headless-lm export] wrote {out}")
    return {"output_dir": str(out)}
