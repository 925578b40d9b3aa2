"""`camels eval`: build the stream, adapt the base model document by document with the chosen weighting,
optionally light-tune on QA, generate answers and score them. Nothing is written until the run succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lmlab.config import save_config
from lmlab.device import torch_device
from lmlab.io import mark_done, prepare_run_dir, write_json
from lmlab.seed import seed_everything

from camels.config import EvalConfig
from camels.data import build_stream, load_rows, read_table
from camels.models import is_large, load_causal_lm, load_tokenizer
from camels.online import adapt, answer_nll, answer_questions, light_tune, score_answers, write_eval
from camels.weighting import (
    CaMeLSWeightModel,
    SSMWeights,
    TfidfModel,
    TfidfWeights,
    UniformWeights,
    load_spacy,
)


def build_weighting(cfg: EvalConfig, tokenizer: Any, stream_docs: list[str], device: torch.device) -> Any:
    """The weighting callable named by cfg.weight_model."""
    if cfg.weight_model == "uniform":
        return UniformWeights(cfg.init_scalar)
    if cfg.weight_model == "ssm":
        return SSMWeights(load_spacy(cfg.ssm_spacy_model), tokenizer)
    if cfg.weight_model == "TFIDF":
        corpus_path = cfg.tfidf_path or (Path(cfg.test_path).parent / "all.csv")
        if Path(corpus_path).is_file():
            frame = read_table(corpus_path)
            column = next((c for c in ("text", "ans_paragraph", "context") if c in frame.columns), None)
            corpus = [str(t) for t in frame[column]] if column else stream_docs
        else:
            corpus = stream_docs
        return TfidfWeights(TfidfModel(corpus), tokenizer, cfg.min_threshold)
    model = CaMeLSWeightModel.from_checkpoint(cfg.weight_model_path).to(device).eval()
    return model


def _precision_dtype(cfg: EvalConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16-mixed" or (
        cfg.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    device = torch_device(cfg.device)
    stream = build_stream(cfg.dataset, read_table(cfg.test_path), cfg.downsample_to, cfg.seed)
    tok = load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    model = load_causal_lm(
        cfg.base_model, cfg.base_model_state_dict, attn_implementation=cfg.attn_implementation
    ).to(device)
    if is_large(model):
        model.gradient_checkpointing_enable()
    weighting = build_weighting(cfg, tok, stream.docs, device)
    cfg_autocast = _precision_dtype(cfg, device)
    questions = [q for q, _, _ in stream.qa]
    mode_k = int(cfg.eval[2:]) if cfg.eval.startswith("em") and cfg.eval[2:] else 1
    gen = {
        "strategy": cfg.generation_strategy,
        "num_beams": max(cfg.num_beams, mode_k - mode_k % 4 + 4) if mode_k > 1 else cfg.num_beams,
        "num_beam_groups": cfg.num_beam_groups if cfg.generation_strategy == "group_beam" else 1,
        "diversity_penalty": cfg.diversity_penalty,
        "length_penalty": cfg.length_penalty,
        "max_new_tokens": cfg.max_new_tokens,
        "num_return_sequences": mode_k,
    }
    outputs: dict[str, list] = {}
    summary: dict[str, Any] = {"n_docs": len(stream.docs), "n_questions": len(stream.qa)}

    def evaluate(tag: str) -> None:
        if cfg.eval == "ppl":
            pairs = [(q, a) for q, a, _ in stream.qa]
            nll = answer_nll(model, tok, pairs)
            summary[f"{tag}_nll"] = nll
            summary[f"{tag}_ppl"] = float(torch.tensor(nll).exp())
            return
        preds = answer_questions(model, tok, questions, cfg.generation_batch_size, cfg.progress_bar, **gen)
        outputs[tag] = score_answers(stream.qa, preds)

    if cfg.eval_init:
        evaluate("init")

    class _AdaptCfg:
        lr, optimizer, grad_clip_thresh, n_epochs = cfg.lr, cfg.optimizer, cfg.grad_clip_thresh, cfg.n_epochs
        grad_acc_steps, max_text_len, loss_norm, autocast_dtype = (
            cfg.grad_acc_steps,
            cfg.max_text_len,
            cfg.loss_norm,
            cfg_autocast,
        )

    adapt(model, weighting, stream, tok, _AdaptCfg, progress=cfg.progress_bar)
    if cfg.qa_lt_final:
        train_pairs = (
            [(q, a) for _, q, a in load_rows(cfg.dataset, cfg.qa_train_path)] if cfg.qa_train_path else []
        )
        val_pairs = [(q, a) for _, q, a in load_rows(cfg.dataset, cfg.qa_val_path)] if cfg.qa_val_path else []
        summary.update(
            {
                k: v
                for k, v in light_tune(model, tok, train_pairs, val_pairs, cfg).items()
                if k != "lt_history"
            }
        )
    evaluate("final")
    out = prepare_run_dir(cfg.output_dir, overwrite=cfg.overwrite)
    for tag, rows in outputs.items():
        s = write_eval(out, f"{tag}_{cfg.eval}", rows)
        summary.update({f"{tag}_{k}" if tag != "final" else k: v for k, v in s.items()})
    save_config(cfg, out / "config.yaml")
    write_json(
        out / "results.json",
        {**summary, "weight_model": cfg.weight_model, "lr": cfg.lr, "dataset": cfg.dataset},
    )
    mark_done(out)
    if "em" in summary:
        print(
            f"[camels eval] {cfg.weight_model} lr={cfg.lr}: EM {100 * summary['em']:.2f} (strict {100 * summary['em_strict']:.2f}) F1 {100 * summary['avg_f1']:.2f} on {summary['n']} questions -> {out}"
        )
    return {**summary, "weight_model": cfg.weight_model, "lr": cfg.lr}


__all__ = ["build_weighting", "run_eval"]
