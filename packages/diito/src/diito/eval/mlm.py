"""`diito eval-mlm`: masked-LM perplexity, no training (reference run_mlm.py --do_eval).

Tokenise the validation texts, concatenate, cut into blocks of max_seq_length, mask 15% of the non-special tokens
(80/10/10, seeded), perplexity = exp(total NLL / masked tokens). (HF's run_mlm exponentiates the mean of batch
losses; with equal-size blocks the two differ only by the per-batch masked-token counts.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from lmlab.errors import LmlabError
from lmlab.masking import bernoulli_positions, corrupt

from diito.config import EvalMlmConfig


def mask_tokens(
    ids: torch.Tensor, tokenizer, prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    special = torch.tensor(
        [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True) for row in ids.tolist()],
        dtype=torch.bool,
    )
    chosen = bernoulli_positions(~special, prob, gen)
    return corrupt(
        ids, chosen, mask_token_id=tokenizer.mask_token_id, random_ids=len(tokenizer), generator=gen
    )


def mlm_perplexity(
    model,
    tokenizer,
    texts: list[str],
    max_len: int,
    batch_size: int,
    prob: float,
    seed: int,
    max_blocks: int = -1,
) -> dict:
    from lmlab.metrics import perplexity

    if tokenizer.mask_token_id is None:
        raise LmlabError("the tokenizer has no mask token; eval-mlm needs a masked LM")
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
    body = max_len - 2
    n_blocks = len(ids) // body
    if n_blocks == 0:
        raise LmlabError(
            f"the validation text has {len(ids)} tokens, fewer than one block of {max_len}; lower --max_seq_length"
        )
    if max_blocks > 0:
        n_blocks = min(n_blocks, max_blocks)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    blocks = torch.tensor([[cls, *ids[i * body : (i + 1) * body], sep] for i in range(n_blocks)])
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, n_blocks, batch_size):
            x, labels = mask_tokens(blocks[i : i + batch_size], tokenizer, prob, gen)
            logits = model(input_ids=x.to(dev), attention_mask=torch.ones_like(x).to(dev)).logits.float()
            sel = labels >= 0
            nll += float(
                torch.nn.functional.cross_entropy(logits[sel.to(dev)], labels[sel].to(dev), reduction="sum")
            )
            n += int(sel.sum())
    return {
        "perplexity": perplexity(nll, n),
        "eval_loss": nll / max(n, 1),
        "masked_tokens": n,
        "blocks": n_blocks,
    }


def run_eval_mlm(cfg: EvalMlmConfig) -> dict:
    from lmlab.data import load_corpus
    from lmlab.device import torch_device
    from lmlab.io import finish_run, prepare_run_dir, refuse_finished, results_report
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from diito.loading import load_with_head

    if not cfg.model_name_or_path or not cfg.validation_file:
        raise LmlabError("--model_name_or_path and --validation_file are required")
    refuse_finished(cfg.output_dir, cfg.overwrite)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    model = load_with_head(
        AutoModelForMaskedLM, cfg.model_name_or_path, "model", "masked-LM head", "diito eval-mlm"
    ).to(torch_device(cfg.device))
    max_len = cfg.max_seq_length
    if max_len == -1:
        max_len = min(512, getattr(model.config, "max_position_embeddings", 512), tokenizer.model_max_length)
    texts = load_corpus(
        cfg.validation_file,
        text_column=cfg.text_column,
        split="validation" if not Path(cfg.validation_file).is_file() else "train",
    )[cfg.text_column]
    result = {
        "model": cfg.model_name_or_path,
        "max_seq_length": max_len,
        **mlm_perplexity(
            model,
            tokenizer,
            list(texts),
            max_len,
            cfg.batch_size,
            cfg.mlm_probability,
            cfg.seed,
            cfg.max_eval_samples,
        ),
    }
    text = (
        f"Masked-LM perplexity of `{cfg.model_name_or_path}` on `{cfg.validation_file}`: exp(total NLL / masked "
        f"tokens), {cfg.mlm_probability:g} of the tokens masked (80/10/10), seed {cfg.seed}."
    )
    prepare_run_dir(cfg.output_dir, cfg.overwrite)  # --overwrite: the finished run's outputs go first
    out = finish_run(cfg.output_dir, result, results_report("diito eval-mlm", result, text))
    print(f"[diito eval-mlm] perplexity {result['perplexity']:.3f} -> {out / 'results.json'}")
    return result
