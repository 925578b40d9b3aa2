"""`camels eval`: build the stream, adapt the base model document by document with the chosen weighting,
optionally light-tune on QA, generate answers and score them. Nothing is written until the run succeeded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lmlab.callbacks import seed_micro_batch
from lmlab.config import config_to_dict, save_config
from lmlab.device import torch_device
from lmlab.errors import LmlabError
from lmlab.io import (
    atomic_write,
    finish_run,
    is_done,
    load_safetensors,
    prepare_run_dir,
    refuse_finished,
    results_report,
    save_safetensors,
    write_results,
)
from lmlab.plots import plot_curves
from lmlab.seed import seed_everything
from lmlab.training import resume_checkpoint

from camels.config import EvalConfig
from camels.data import Stream, build_stream, load_rows, read_table
from camels.models import check_vocab, is_large, load_causal_lm, load_tokenizer, load_torch_file
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
    OracleWeights,
    SSMWeights,
    TfidfModel,
    TfidfWeights,
    UniformWeights,
    load_spacy,
)


def build_weighting(cfg: EvalConfig, tokenizer: Any, stream: Stream, device: torch.device) -> Any:
    """The weighting callable named by cfg.weight_model."""
    stream_docs = stream.docs
    if cfg.weight_model == "oracle":
        answers: dict[str, list[str]] = {}
        for _, gold, d in stream.qa:
            answers.setdefault(stream.docs[d], []).append(gold)
        return OracleWeights(tokenizer, answers, cfg.max_text_len)
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


ADAPT_KEYS = (
    "dataset",
    "test_path",
    "full_passage",
    "downsample_to",
    "seed",
    "base_model",
    "base_model_state_dict",
    "tokenizer_name",
    "weight_model",
    "weight_model_path",
    "init_scalar",
    "ssm_spacy_model",
    "tfidf_path",
    "min_threshold",
    "lr",
    "optimizer",
    "grad_clip_thresh",
    "n_epochs",
    "grad_acc_steps",
    "max_text_len",
    "loss_norm",
    "eval_every_k",
    "precision",
)  # the options that shape the adaptation: a checkpoint resumes only a run with the same values


def _adapt_options(cfg: EvalConfig) -> dict[str, Any]:
    values = config_to_dict(cfg)
    return {k: values[k] for k in ADAPT_KEYS}


def _read_adapt_checkpoint(cfg: EvalConfig, path: str, total: int) -> dict[str, Any]:
    """The state saved by an interrupted `eval` (loaded with weights_only=True), checked against this run."""
    ckpt = load_torch_file(path, "checkpoint")
    state = ckpt.get("camels_eval") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "model" not in ckpt or "optimizer" not in ckpt:
        raise LmlabError(
            f"{path} is not a checkpoint of camels eval; pass --resume never to start afresh "
            "or choose another --output_dir"
        )
    ours = _adapt_options(cfg)
    for key, value in state["options"].items():
        if ours.get(key) != value:
            raise LmlabError(
                f"{path} was written by a run with --{key} {value}, this one has {ours.get(key)}; run with the "
                "same options to resume it, or pass --resume never / another --output_dir"
            )
    if not 0 < state["docs_seen"] <= total:
        raise LmlabError(f"{path} is at document {state['docs_seen']} of a {total}-document stream")
    return {**state, "model": ckpt["model"], "optimizer": ckpt["optimizer"]}


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    refuse_finished(out, cfg.overwrite)  # before any work, not after it
    device = torch_device(cfg.device)
    stream = build_stream(
        cfg.dataset,
        read_table(cfg.test_path),
        cfg.downsample_to,
        cfg.seed,
        str(cfg.test_path),
        cfg.full_passage,
    )
    total_docs = cfg.n_epochs * len(stream.docs)
    # the QA pre-training validation pairs (unrelated to the stream), to measure forgetting
    qa_val = (
        [(q, a, -1) for _, q, a in load_rows(cfg.dataset, cfg.qa_val_path)] if cfg.unrelated_qa_eval else []
    )
    if cfg.qa_lt_final:  # read now: a missing file must not surface after the whole adaptation
        if not cfg.qa_train_path or not cfg.qa_val_path:
            raise LmlabError(
                "--qa_lt_final true needs --qa_train_path and --qa_val_path (the QA pre-training pairs)"
            )
        lt_train = [(q, a) for _, q, a in load_rows(cfg.dataset, cfg.qa_train_path)]
        lt_val = [(q, a) for _, q, a in load_rows(cfg.dataset, cfg.qa_val_path)]
    tok = load_tokenizer(cfg.tokenizer_name or cfg.base_model)
    model = load_causal_lm(
        cfg.base_model, cfg.base_model_state_dict, attn_implementation=cfg.attn_implementation
    ).to(device)
    check_vocab(tok, model, f"--base_model {cfg.base_model}")
    if is_large(model):
        model.gradient_checkpointing_enable()
    weighting = build_weighting(cfg, tok, stream, device)
    if isinstance(weighting, CaMeLSWeightModel):
        check_vocab(tok, weighting.encoder, f"the weighting model {cfg.weight_model_path}")
    fresh = is_done(out)  # --overwrite of a finished run: its checkpoints are not resumed
    ckpt_path = None if fresh else resume_checkpoint(cfg, out)
    resume = _read_adapt_checkpoint(cfg, ckpt_path, total_docs) if ckpt_path else None
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

    checkpoints = out / "checkpoints"

    class _AdaptCfg:
        lr, optimizer, grad_clip_thresh, n_epochs = cfg.lr, cfg.optimizer, cfg.grad_clip_thresh, cfg.n_epochs
        grad_acc_steps, max_text_len, loss_norm, autocast_dtype = (
            cfg.grad_acc_steps,
            cfg.max_text_len,
            cfg.loss_norm,
            cfg_autocast,
        )
        seed = cfg.seed
        checkpoint_dir = checkpoints if cfg.checkpoint_every_n_docs else None

    snapshots: dict[int, dict[str, torch.Tensor]] = {}  # documents seen -> CPU copy of the parameters
    on_disk: set[int] = set()  # snapshots already written beside the checkpoint
    losses: list[float] = []  # per document, for metrics.jsonl
    started: list[int] = []  # non-empty once this process wrote a checkpoint
    if resume is not None:
        load_params(model, resume["model"])
        on_disk.update(resume["snapshots"])
        snapshots.update({n: load_safetensors(checkpoints / f"snapshot-{n}.safetensors") for n in on_disk})
        losses.extend(resume["losses"])
        print(f"[camels eval] resuming {ckpt_path} after document {resume['docs_seen']} of {total_docs}")

    def snapshot(n: int) -> None:
        if n % cfg.eval_every_k == 0:
            snapshots[n] = snapshot_params(model)

    def save_checkpoint(n: int, optimizer: torch.optim.Optimizer) -> None:
        """checkpoints/last.ckpt: the adapted parameters, the optimizer state, the position in the stream,
        the losses so far; eval_every_k snapshots are written once each, beside it, as safetensors."""
        if not started:  # the first checkpoint of this process (re)starts the run folder
            if fresh:  # --overwrite of a finished run: its checkpoints go
                shutil.rmtree(checkpoints, ignore_errors=True)
            prepare_run_dir(out, overwrite=cfg.overwrite)
            save_config(cfg, out / "config.yaml")
            checkpoints.mkdir(exist_ok=True)
            started.append(n)
        for k in sorted(set(snapshots) - on_disk):
            save_safetensors(snapshots[k], checkpoints / f"snapshot-{k}.safetensors")
            on_disk.add(k)
        state = {
            "camels_eval": {
                "docs_seen": n,
                "options": _adapt_options(cfg),
                "snapshots": sorted(on_disk),
                "losses": list(losses),
            },
            "model": snapshot_params(model),
            "optimizer": optimizer.state_dict(),
        }
        tmp = checkpoints / "last.ckpt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, checkpoints / "last.ckpt")

    if resume is None or resume["docs_seen"] < total_docs:
        adapt(
            model,
            weighting,
            stream,
            tok,
            _AdaptCfg,
            progress=cfg.progress_bar,
            after_document=snapshot if cfg.eval_every_k > 0 else None,
            checkpoint=save_checkpoint if cfg.checkpoint_every_n_docs else None,
            checkpoint_every=cfg.checkpoint_every_n_docs,
            resume=resume,
            losses=losses,
        )
    if cfg.qa_lt_final:
        seed_micro_batch(cfg.seed, 0, total_docs)  # light-tuning's dropout: the same after a resume
        summary.update(
            {k: v for k, v in light_tune(model, tok, lt_train, lt_val, cfg).items() if k != "lt_history"}
        )
    evaluate_all("final")
    for n in sorted(snapshots):  # the final model is no longer needed: each snapshot is loaded into it
        load_params(model, snapshots.pop(n))
        evaluate_all(f"step{n}")
    if fresh and not started:
        shutil.rmtree(checkpoints, ignore_errors=True)
    out = prepare_run_dir(out, overwrite=cfg.overwrite)
    with atomic_write(out / "metrics.jsonl") as fh:  # document n's loss under step n - 1, as Lightning logs
        fh.writelines(json.dumps({"step": i, "adapt/loss": v}) + "\n" for i, v in enumerate(losses))
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
    results = {**summary, "weight_model": cfg.weight_model, "lr": cfg.lr, "dataset": cfg.dataset}
    finish_run(out, results, results_report(f"camels eval: {cfg.weight_model}, lr {cfg.lr:g}", results))
    if "em" in summary:
        print(
            f"[camels eval] {cfg.weight_model} lr={cfg.lr}: EM {100 * summary['em']:.2f} (strict {100 * summary['em_strict']:.2f}) F1 {100 * summary['avg_f1']:.2f} on {summary['n']} questions -> {out}"
        )
    else:
        print(
            f"[camels eval] {cfg.weight_model} lr={cfg.lr}: answer NLL {summary['final_nll']:.4f} (perplexity {summary['final_ppl']:.2f}) on {summary['n_questions']} questions -> {out}"
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
