"""`camels eval`: build the stream, adapt the base model document by document with the chosen weighting,
optionally light-tune on QA, generate answers and score them. Nothing is written until the run succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lmlab.config import save_config
from lmlab.device import torch_device
from lmlab.io import mark_done, prepare_run_dir, write_json, write_results
from lmlab.plots import plot_curves
from lmlab.seed import seed_everything

from camels.config import EvalConfig
from camels.data import build_stream, load_rows, read_table
from camels.models import is_large, load_causal_lm, load_tokenizer
from camels.online import (
    adapt,
    answer_nll,
    answer_questions,
    light_tune,
    load_params,
    score_answers,
    snapshot_params,
    write_eval,
)
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
            names = ("ans_text",) if cfg.full_passage else ("text", "ans_paragraph", "context")
            column = next((c for c in names if c in frame.columns), None)
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
    stream = build_stream(
        cfg.dataset,
        read_table(cfg.test_path),
        cfg.downsample_to,
        cfg.seed,
        str(cfg.test_path),
        cfg.full_passage,
    )
    # the QA pre-training validation pairs (unrelated to the stream), to measure forgetting
    qa_val = (
        [(q, a, -1) for _, q, a in load_rows(cfg.dataset, cfg.qa_val_path)] if cfg.unrelated_qa_eval else []
    )
    tok = load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    model = load_causal_lm(
        cfg.base_model, cfg.base_model_state_dict, attn_implementation=cfg.attn_implementation
    ).to(device)
    if is_large(model):
        model.gradient_checkpointing_enable()
    weighting = build_weighting(cfg, tok, stream.docs, device)
    cfg_autocast = _precision_dtype(cfg, device)
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
    outputs: dict[str, list] = {}  # tag -> scored rows (em modes)
    scores: dict[str, dict[str, float]] = {}  # tag -> summary numbers
    summary: dict[str, Any] = {"n_docs": len(stream.docs), "n_questions": len(stream.qa)}

    def evaluate(tag: str, qa: list[tuple[str, str, int]]) -> None:
        if cfg.eval == "ppl":
            nll = answer_nll(model, tok, [(q, a) for q, a, _ in qa])
            scores[tag] = {"nll": nll, "ppl": float(torch.tensor(nll).exp())}
            return
        preds = answer_questions(
            model, tok, [q for q, _, _ in qa], cfg.generation_batch_size, cfg.progress_bar, **gen
        )
        outputs[tag] = score_answers(qa, preds)

    def evaluate_all(tag: str) -> None:
        evaluate(tag, stream.qa)
        if qa_val:
            evaluate(f"{tag}_qa_val", qa_val)

    if cfg.eval_init:
        evaluate("init", stream.qa)
    if qa_val:
        evaluate("init_qa_val", qa_val)

    class _AdaptCfg:
        lr, optimizer, grad_clip_thresh, n_epochs = cfg.lr, cfg.optimizer, cfg.grad_clip_thresh, cfg.n_epochs
        grad_acc_steps, max_text_len, loss_norm, autocast_dtype = (
            cfg.grad_acc_steps,
            cfg.max_text_len,
            cfg.loss_norm,
            cfg_autocast,
        )

    snapshots: dict[int, dict[str, torch.Tensor]] = {}  # documents seen -> CPU copy of the parameters

    def snapshot(n: int) -> None:
        if n % cfg.eval_every_k == 0:
            snapshots[n] = snapshot_params(model)

    adapt(
        model,
        weighting,
        stream,
        tok,
        _AdaptCfg,
        progress=cfg.progress_bar,
        after_document=snapshot if cfg.eval_every_k > 0 else None,
    )
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
    evaluate_all("final")
    for n in sorted(snapshots):  # the final model is no longer needed: each snapshot is loaded into it
        load_params(model, snapshots.pop(n))
        evaluate_all(f"step{n}")
    out = prepare_run_dir(cfg.output_dir, overwrite=cfg.overwrite)
    for tag, rows in outputs.items():
        scores[tag] = write_eval(out, f"{tag}_{cfg.eval}", rows)
    for tag, s in scores.items():
        summary.update({f"{tag}_{k}" if tag != "final" or cfg.eval == "ppl" else k: v for k, v in s.items()})
    if qa_val:
        summary.update(_forgetting(scores))
    if cfg.eval_every_k > 0:
        total = cfg.n_epochs * len(stream.docs)
        write_adaptation_curve(out, scores, total, f"{cfg.weight_model} lr={cfg.lr}")
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


def _forgetting(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Forgetting on the unrelated QA-val pairs: the F1 drop (init − final) or the NLL increase (final − init)."""
    init, final = scores["init_qa_val"], scores["final_qa_val"]
    if "nll" in init:
        return {"qa_val_nll_increase": final["nll"] - init["nll"]}
    return {
        "qa_val_f1_drop": init["avg_f1"] - final["avg_f1"],
        "qa_val_em_drop": init["em"] - final["em"],
    }


def write_adaptation_curve(
    out_dir: Path, scores: dict[str, dict[str, float]], total_docs: int, title: str
) -> list[dict[str, Any]]:
    """`adaptation_curve.csv`/`.json` (documents seen vs the stream's metrics: init at 0 if evaluated, every
    snapshot, final; the QA-val metrics beside when evaluated) and `adaptation_curve.png` (F1, or NLL for
    eval=ppl)."""
    points = [("init", 0)] if "init" in scores else []
    points += sorted(
        ((t, int(t[4:])) for t in scores if t.startswith("step") and t[4:].isdigit()), key=lambda p: p[1]
    )
    points.append(("final", total_docs))
    keys = ["nll", "ppl"] if "nll" in scores["final"] else ["em", "em_strict", "avg_f1", "max_f1"]
    rows = []
    for tag, n in points:
        row: dict[str, Any] = {"docs_seen": n, "tag": tag, **{k: scores[tag][k] for k in keys}}
        if f"{tag}_qa_val" in scores:
            row.update({f"qa_val_{k}": scores[f"{tag}_qa_val"][k] for k in keys})
        rows.append(row)
    write_results(rows, out_dir, name="adaptation_curve")
    shown = ["nll"] if "nll" in keys else ["avg_f1", "em"]
    plot_curves(
        [r["docs_seen"] for r in rows],
        {k: [r[k] for r in rows] for k in shown},
        out_dir / "adaptation_curve.png",
        xlabel="documents seen",
        ylabel="answer NLL" if "nll" in keys else "score",
        title=title,
    )
    return rows


__all__ = ["build_weighting", "run_eval", "write_adaptation_curve"]
