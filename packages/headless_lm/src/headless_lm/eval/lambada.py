"""Zero-shot LAMBADA scorer (lm-eval-harness `lambada_openai` semantics, no network).

context = passage up to its last space, continuation = " " + last word. Accuracy: greedy decoding reproduces
every continuation token. Perplexity: exp(-mean over passages of the summed continuation log-likelihood).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lmlab.errors import LmlabError
from lmlab.metrics import perplexity

from headless_lm.config import LambadaConfig


def split_passage(text: str) -> tuple[str, str]:
    text = text.strip()
    if " " not in text:
        raise LmlabError(f"passage without a space cannot be split into context and last word: {text[:40]!r}")
    context, last = text.rsplit(" ", 1)
    return context, " " + last


@torch.no_grad()
def evaluate(model, tokenizer, texts, *, batch_size: int = 8) -> dict:
    """{"acc", "ppl", "n"} of a causal LM on `texts` (passages)."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise LmlabError("no LAMBADA passages to evaluate")
    model.eval()
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    items = []
    for text in texts:
        context, cont = split_passage(text)
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not ctx_ids:
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ctx_ids = [bos]
        ids = ctx_ids + cont_ids
        if limit is not None and len(ids) > limit:
            ids = ids[-limit:]
        items.append((ids, len(cont_ids)))
    correct, total_ll = 0, 0.0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, (ids, _) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for i, (ids, n_cont) in enumerate(chunk):
            length = len(ids)
            positions = torch.arange(length - n_cont - 1, length - 1)
            targets = torch.tensor(ids[length - n_cont :])
            lp = logprobs[i, positions]
            total_ll += lp.gather(1, targets[:, None]).sum().item()
            correct += int(torch.equal(lp.argmax(-1), targets))
    n = len(items)
    return {"acc": correct / n, "ppl": perplexity(-total_ll, n), "n": n}  # per passage: the last word's NLL


def read_passages(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"--data_file {path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line)["text"] for line in lines]
        except (json.JSONDecodeError, KeyError) as err:
            raise LmlabError(f"{path}: every line must be a JSON object with a text field ({err})") from None
    return lines


def run_lambada(cfg: LambadaConfig) -> dict:
    from lmlab.device import torch_device
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch_device(cfg.device)
    passages = read_passages(cfg.data_file)
    try:  # weights_only: a pickled pytorch_model.bin that would run code is refused
        model = AutoModelForCausalLM.from_pretrained(cfg.model, weights_only=True).to(device)
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    except Exception as err:  # transformers raises OSError, ValueError, pickle errors, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise LmlabError(f"cannot load --model {cfg.model} ({type(err).__name__}: {first})") from None
    result = evaluate(model, tokenizer, passages, batch_size=cfg.batch_size)
    result = {"model": cfg.model, "data_file": cfg.data_file, **result}
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result
