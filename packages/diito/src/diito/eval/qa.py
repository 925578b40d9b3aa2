"""`diito eval-qa`: SQuAD-style extractive QA fine-tuning with a stock QA head (reference run_qa.py): windows of
max_seq_length with doc_stride overlap, answer spans located with offset mappings (unanswerable -> [CLS]),
n-best span search with max_answer_length, official EM/F1 normalisation from lmlab.metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lmlab.errors import LmlabError

from diito.config import EvalQaConfig


def read_squad(path: str) -> list[dict]:
    """Examples {id, question, context, answers: {text, answer_start}} from the flat HF layout or the official
    nested one."""
    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"SQuAD file {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))["data"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise LmlabError(f"{p} is not a SQuAD JSON file (UTF-8, a top-level 'data' list): {err}") from err
    out = []
    try:
        for item in data:
            if "paragraphs" in item:
                for para in item["paragraphs"]:
                    for qa in para["qas"]:
                        ans = qa.get("answers", [])
                        out.append(
                            {
                                "id": qa["id"],
                                "question": qa["question"],
                                "context": para["context"],
                                "answers": {
                                    "text": [a["text"] for a in ans],
                                    "answer_start": [a["answer_start"] for a in ans],
                                },
                            }
                        )
            else:
                out.append({k: item[k] for k in ("id", "question", "context", "answers")})
    except (KeyError, TypeError) as err:
        raise LmlabError(f"{p}: question {len(out) + 1} lacks field {err} (or is not a JSON object)") from err
    if not out:
        raise LmlabError(f"{p} holds no question")
    return out


def _windows(tokenizer, examples, cfg):
    return tokenizer(
        [e["question"].lstrip() for e in examples],
        [e["context"] for e in examples],
        truncation="only_second",
        max_length=cfg.max_seq_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def train_features(tokenizer, examples, cfg) -> list[dict]:
    enc = _windows(tokenizer, examples, cfg)
    feats = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        start = end = 0
        if ex["answers"]["text"]:
            a0 = ex["answers"]["answer_start"][0]
            a1 = a0 + len(ex["answers"]["text"][0])
            ctx = [j for j, s in enumerate(seq) if s == 1]
            if offsets[ctx[0]][0] <= a0 and offsets[ctx[-1]][1] >= a1:
                start = next(j for j in ctx if offsets[j][1] > a0)
                end = next(j for j in reversed(ctx) if offsets[j][0] < a1)
        f = {k: torch.tensor(enc[k][i]) for k in tokenizer.model_input_names if k in enc}
        f.update(start_positions=torch.tensor(start), end_positions=torch.tensor(end))
        feats.append(f)
    return feats


def predict(model, tokenizer, examples, cfg) -> dict[str, str]:
    enc = _windows(tokenizer, examples, cfg)
    dev = next(model.parameters()).device
    best: dict[int, tuple[float, str]] = {}
    with torch.no_grad():
        for i in range(len(enc["input_ids"])):
            inputs = {
                k: torch.tensor([enc[k][i]], device=dev) for k in tokenizer.model_input_names if k in enc
            }
            out = model(**inputs)
            s, e = out.start_logits[0].float().cpu(), out.end_logits[0].float().cpu()
            ex_i = enc["overflow_to_sample_mapping"][i]
            ctx = examples[ex_i]["context"]
            seq, offsets = enc.sequence_ids(i), enc["offset_mapping"][i]
            starts = s.argsort(descending=True)[: cfg.n_best_size].tolist()
            ends = e.argsort(descending=True)[: cfg.n_best_size].tolist()
            for a in starts:
                for b in ends:
                    if seq[a] != 1 or seq[b] != 1 or b < a or b - a + 1 > cfg.max_answer_length:
                        continue
                    score = float(s[a] + e[b])
                    if ex_i not in best or score > best[ex_i][0]:
                        best[ex_i] = (score, ctx[offsets[a][0] : offsets[b][1]])
    return {ex["id"]: best.get(i, (0.0, ""))[1] for i, ex in enumerate(examples)}


def run_eval_qa(cfg: EvalQaConfig) -> dict:
    from lmlab.io import write_json
    from lmlab.metrics import max_over_ground_truths, squad_exact_match, squad_f1
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from diito.eval.common import finetune, finish, resume_point
    from diito.loading import load_for_finetuning

    if not cfg.train_file:
        raise LmlabError("--train_file is required")
    train = read_squad(cfg.train_file)
    evals = read_squad(cfg.validation_file or cfg.train_file)
    if cfg.max_train_samples > 0:
        train = train[: cfg.max_train_samples]
    if cfg.max_eval_samples > 0:
        evals = evals[: cfg.max_eval_samples]
    ckpt = resume_point(cfg)
    from lmlab.seed import seed_everything

    seed_everything(cfg.seed)  # the new head's initialisation depends on the seed, not on what ran before
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    if cfg.max_seq_length > tokenizer.model_max_length:
        cfg.max_seq_length = tokenizer.model_max_length
        cfg.doc_stride = min(cfg.doc_stride, cfg.max_seq_length // 4)
    model = load_for_finetuning(AutoModelForQuestionAnswering, cfg.model_name_or_path, "diito eval-qa")
    finetune(model, train_features(tokenizer, train, cfg), cfg, ckpt)
    preds = predict(model, tokenizer, evals, cfg)
    em = f1 = 0.0
    for ex in evals:
        gold = ex["answers"]["text"] or [""]
        em += max_over_ground_truths(squad_exact_match, preds[ex["id"]], gold)
        f1 += max_over_ground_truths(squad_f1, preds[ex["id"]], gold)
    result = {
        "model": cfg.model_name_or_path,
        "seed": cfg.seed,
        "exact_match": 100 * em / len(evals),
        "f1": 100 * f1 / len(evals),
        "n_train": len(train),
        "n_eval": len(evals),
    }
    write_json(Path(cfg.output_dir) / "predictions.json", preds)
    text = (
        f"`{cfg.model_name_or_path}` fine-tuned for extractive QA on `{cfg.train_file}` ({len(train)} questions, "
        f"seed {cfg.seed}), scored with the official SQuAD EM/F1 on {len(evals)} questions; answers in "
        "`predictions.json`."
    )
    path = finish(cfg, "diito eval-qa", result, text)
    print(f"[diito eval-qa] EM {result['exact_match']:.2f} F1 {result['f1']:.2f} -> {path}")
    return result
