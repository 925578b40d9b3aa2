"""Online adaptation (one optimizer step per stream document on the weighted loss), QA light-tuning, and
closed-book QA evaluation with generated answers (prefix EM as in the reference, strict EM and F1 beside it)."""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lmlab.errors import LmlabError
from lmlab.io import atomic_write, write_json
from tqdm.auto import tqdm

from camels.data import Stream, collate_docs, collate_qa, pad_id
from camels.generation import generate
from camels.losses import loss_denominator, weighted_lm_loss
from camels.metrics import exact_match, f1_score

Weighting = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    raise LmlabError(f"optimizer must be adam, sgd or adafactor, got {name!r}")


def adapt(
    base_model: torch.nn.Module,
    weighting: Weighting,
    stream: Stream,
    tokenizer: Any,
    cfg: Any,
    progress: bool = True,
    after_document: Callable[[int], None] | None = None,
    checkpoint: Callable[[int, torch.optim.Optimizer], None] | None = None,
    checkpoint_every: int = 0,
    resume: dict[str, Any] | None = None,
    losses: list[float] | None = None,
) -> torch.nn.Module:
    """Fine-tune `base_model` in place on the stream's documents in order: one optimizer step per document
    (`grad_acc_steps` documents per step if > 1) on the weighted loss of spec §2, with weights from the frozen
    `weighting`; the model is in train mode (dropout on). `after_document(n)` is called after the n-th document
    (counted over all epochs, from 1) and its optimizer step, if one fell due.

    Each document's randomness (dropout) is keyed on (cfg.seed, its number) by lmlab's `seed_micro_batch`, so
    the run can stop and resume at any document: `checkpoint(n, optimizer)` is called every `checkpoint_every`
    documents (a multiple of grad_acc_steps: no half-accumulated gradient) and after the last one, and
    `resume={"docs_seen": n, "optimizer": state}` continues after document n (the model must already hold the
    parameters saved with it). `losses` collects each document's loss. A non-finite loss or gradient norm
    raises `NonFiniteLossError` before the optimizer steps on it."""
    from lmlab.callbacks import NonFiniteLossError, check_finite, seed_micro_batch

    if not stream.docs:
        raise LmlabError("the document stream is empty; nothing to adapt on")
    device = next(base_model.parameters()).device
    opt = make_optimizer(
        getattr(cfg, "optimizer", "adam"),
        [p for p in base_model.parameters() if p.requires_grad],
        float(cfg.lr),
    )
    acc = int(getattr(cfg, "grad_acc_steps", 1))
    max_len = int(getattr(cfg, "max_text_len", 1024))
    norm = getattr(cfg, "loss_norm", "padded")
    autocast = getattr(cfg, "autocast_dtype", None)
    seed = int(getattr(cfg, "seed", 0))
    checkpoint_dir = getattr(cfg, "checkpoint_dir", None)
    total = int(getattr(cfg, "n_epochs", 1)) * len(stream.docs)
    start = 0
    if resume is not None:
        start = int(resume["docs_seen"])
        opt.load_state_dict(resume["optimizer"])
    base_model.train()
    opt.zero_grad(set_to_none=True)
    bar = tqdm(total=total, initial=start, desc="adapt", disable=not progress, leave=False)
    for n in range(start + 1, total + 1):  # n: documents seen after this one
        seed_micro_batch(seed, 0, n - 1)
        batch = collate_docs(tokenizer, [stream.docs[(n - 1) % len(stream.docs)]], max_len)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.no_grad():
            w = weighting(ids, mask).to(device)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = base_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = weighted_lm_loss(logits, ids, mask, w, denom=loss_denominator(norm, mask, w, max_len))
        check_finite(n, {"weighted_nll": loss}, checkpoint_dir)
        if losses is not None:
            losses.append(float(loss.detach()))
        (loss / acc).backward()
        if n % acc == 0 or n == total:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                base_model.parameters(), float(getattr(cfg, "grad_clip_thresh", 750.0))
            )
            if not bool(torch.isfinite(grad_norm)):
                raise NonFiniteLossError(n, f"the gradient norm is {float(grad_norm)}", checkpoint_dir)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if after_document is not None:
            after_document(n)
        if checkpoint is not None and (n == total or (checkpoint_every and n % checkpoint_every == 0)):
            checkpoint(n, opt)
        bar.update(1)
    bar.close()
    return base_model


def snapshot_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters: everything `adapt` changes (buffers stay as they are)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_params(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy a `snapshot_params` snapshot back into `model` in place."""
    named = dict(model.named_parameters())
    for n, v in params.items():
        named[n].copy_(v)


def left_pad_questions(
    tokenizer: Any, questions: Sequence[str], max_len: int = 104
) -> tuple[torch.Tensor, torch.Tensor]:
    enc = [
        tokenizer(q.strip(), add_special_tokens=False)["input_ids"][-max_len:] or [tokenizer.eos_token_id]
        for q in questions
    ]
    L = max(len(e) for e in enc)
    ids = torch.full((len(enc), L), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(enc), L), dtype=torch.long)
    for b, e in enumerate(enc):
        ids[b, L - len(e) :] = torch.tensor(e)
        mask[b, L - len(e) :] = 1
    return ids, mask


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    batch_size: int = 1,
    progress: bool = False,
    **gen: Any,
) -> list[list[str]]:
    """Generated answers (decoded new tokens, special tokens skipped, stripped) per question."""
    device = next(model.parameters()).device
    out: list[list[str]] = []
    k = int(gen.get("num_return_sequences", 1))
    for i in tqdm(range(0, len(questions), batch_size), desc="generate", disable=not progress, leave=False):
        ids, mask = left_pad_questions(tokenizer, questions[i : i + batch_size])
        seqs = generate(model, ids.to(device), mask.to(device), eos_token_id=tokenizer.eos_token_id, **gen)
        texts = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in seqs]
        out.extend(texts[j : j + k] for j in range(0, len(texts), k))
    return out


def score_answers(
    qa: Sequence[tuple[str, str, int]], predictions: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    rows = []
    for (question, gold, _), preds in zip(qa, predictions, strict=True):
        f1s = [f1_score(p, gold) for p in preds]
        rows.append(
            {
                "question": question,
                "gold": gold,
                "predictions": list(preds),
                "f1s": f1s,
                "em": int(any(exact_match(p, gold) for p in preds)),
                "em_strict": int(any(exact_match(p, gold, prefix=False) for p in preds)),
            }
        )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    if n == 0:
        raise LmlabError("no questions to evaluate")
    avg = [statistics.fmean(r["f1s"]) if r["f1s"] else 0.0 for r in rows]
    mx = [max(r["f1s"]) if r["f1s"] else 0.0 for r in rows]
    em = sum(r["em"] for r in rows)
    return {
        "n": n,
        "em": em / n,
        "em_count": em,
        "em_strict": sum(r["em_strict"] for r in rows) / n,
        "avg_f1": statistics.fmean(avg),
        "avg_f1_std": statistics.pstdev(avg),
        "max_f1": statistics.fmean(mx),
        "max_f1_std": statistics.pstdev(mx),
    }


def write_eval(out_dir: str | os.PathLike, name: str, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """`{name}.csv` in the reference layout (no header; one row per question, then EM / avg_f1 / max_f1
    footers) and `{name}_summary.json`."""
    summary = summarize(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for r in rows:
        writer.writerow([r["question"], r["gold"], r["predictions"], r["f1s"], r["em"]])
    writer.writerow(["EM", summary["em_count"], summary["em"]])
    writer.writerow(["avg_f1", summary["avg_f1"], summary["avg_f1_std"]])
    writer.writerow(["max_f1", summary["max_f1"], summary["max_f1_std"]])
    with atomic_write(Path(out_dir) / f"{name}.csv") as f:
        f.write(buffer.getvalue())
    write_json(Path(out_dir) / f"{name}_summary.json", summary)
    return summary


@torch.no_grad()
def answer_nll(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16, max_len: int = 128
) -> float:
    """Token-weighted mean answer NLL over `pairs`."""
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        b = collate_qa(tokenizer, pairs[i : i + batch_size], max_len)
        logits = (
            model(input_ids=b["qa_ids"].to(device), attention_mask=b["qa_mask"].to(device))
            .logits[:, :-1]
            .float()
        )
        labels = b["qa_labels"][:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(nll)
        count += int((labels != -100).sum())
    return total / max(count, 1)


def qa_scores(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> dict[str, float]:
    """Greedy-decoding F1/EM and answer NLL on QA pairs (QA pre-training validation and light-tuning)."""
    preds = answer_questions(
        model, tokenizer, [q for q, _ in pairs], batch_size=batch_size, strategy="greedy"
    )
    rows = score_answers([(q, a, 0) for q, a in pairs], preds)
    s = summarize(rows)
    return {
        "nll": answer_nll(model, tokenizer, pairs, batch_size),
        "exact_match": s["em"],
        "em_strict": s["em_strict"],
        "avg_f1": s["avg_f1"],
        "max_f1": s["max_f1"],
    }


def light_tune(
    model: torch.nn.Module,
    tokenizer: Any,
    train_pairs: Sequence[tuple[str, str]],
    val_pairs: Sequence[tuple[str, str]],
    cfg: Any,
) -> dict[str, Any]:
    """Post-hoc QA light-tuning with early stopping on `lt_stopping_metric` (patience `lt_patience`
    evaluations, the first at step 0); the best state (possibly the untuned one) is restored."""
    if not train_pairs or not val_pairs:
        raise LmlabError(
            "qa_lt_final needs QA pre-training pairs (qa_train_path) and validation pairs (qa_val_path)"
        )
    device = next(model.parameters()).device
    metric = cfg.lt_stopping_metric
    higher = metric != "nll"
    opt = make_optimizer("adam", model.parameters(), float(cfg.lt_lr))
    history: list[float] = []
    best_state, best = None, -math.inf if higher else math.inf
    g = torch.Generator().manual_seed(int(cfg.seed))
    step = 0
    while step <= int(cfg.lt_steps):
        if step % int(cfg.lt_val_steps) == 0:
            value = qa_scores(model, tokenizer, val_pairs, cfg.generation_batch_size or 16)[metric]
            history.append(value)
            if (value > best) if higher else (value < best):
                best, best_state = (
                    value,
                    copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}),
                )
            p = int(cfg.lt_patience)
            if cfg.lt_early_stop and len(history) > p:
                prev = max(history[:-p]) if higher else min(history[:-p])
                last = max(history[-p:]) if higher else min(history[-p:])
                if (last < prev) if higher else (last > prev):
                    break
        model.train()
        idx = torch.randint(len(train_pairs), (int(cfg.lt_batch_size),), generator=g).tolist()
        b = collate_qa(tokenizer, [train_pairs[i] for i in idx])
        out = model(
            input_ids=b["qa_ids"].to(device),
            attention_mask=b["qa_mask"].to(device),
            labels=b["qa_labels"].to(device),
        )
        (out.loss / int(cfg.lt_grad_acc_steps)).backward()
        step += 1
        if step % int(cfg.lt_grad_acc_steps) == 0:
            opt.step()
            opt.zero_grad(set_to_none=True)
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"lt_history": history, "lt_best": best, "lt_steps": step}
