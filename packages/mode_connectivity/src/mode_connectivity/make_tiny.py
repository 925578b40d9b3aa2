"""`make-tiny`: a random tiny T5 v1.1-style model, a T5-convention tokenizer trained locally, and synthetic
CrossFit-format tasks (no downloads). Optionally a tiny RoBERTa and tiny GLUE folders for `glue-train`.

Tasks (CrossFit format; the label is decided by COUNTING cue words, so no single word gives it away):
- `tiny-nli` (3-way): the premise holds three cue adverbs among distractor adjectives, two of one class
  (surely/indeed/certainly: entailment, maybe/perhaps/possibly: neutral, never/hardly/rarely: contradiction)
  and one of another; the label is the majority class. Any one cue word is of the label's class only 2/3 of
  the time, so a model that reads one cue word is right at most 2/3 of the time; it must count.
- `tiny-nli2`: the same rule and labels on a different surface (longer premises, another lead word): a task
  of the same domain, as ANLI is to MNLI.
- `tiny-binary` (2-way): yes when the rule gives entailment, no otherwise.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from lmlab.logging import get_logger

log = get_logger("mode-connectivity")

PAIRS = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("old", "new"),
    ("open", "closed"),
    ("up", "down"),
    ("early", "late"),
    ("rich", "poor"),
    ("soft", "hard"),
    ("wet", "dry"),
]
ANTONYM = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS}
WORDS = sorted(ANTONYM)
FILLER = ["cat", "dog", "tree", "house", "river", "car", "book", "city", "road", "song", "bird", "stone"]
LABELS = ["entailment", "neutral", "contradiction"]
CUES = {
    "entailment": ["surely", "indeed", "certainly"],
    "neutral": ["maybe", "perhaps", "possibly"],
    "contradiction": ["never", "hardly", "rarely"],
}
N_CUES = 3  # two of the label's class, one of another


def rule_label(words: list[str]) -> str:
    """The majority class of a premise's cue words (the rule every synthetic NLI example follows)."""
    counts = {label: sum(w in CUES[label] for w in words) for label in LABELS}
    if sum(counts.values()) != N_CUES or max(counts.values()) != N_CUES - 1:
        raise ValueError(f"a premise needs {N_CUES} cue words, two of one class: {words}")
    return max(counts, key=counts.__getitem__)


def _nli_example(rng: random.Random, label: str, n_words: int, lead: str) -> tuple[str, str]:
    h = rng.choice(WORDS)
    other = rng.choice([x for x in LABELS if x != label])
    cues = rng.sample(CUES[label], 2) + [rng.choice(CUES[other])]
    words = rng.sample(WORDS, n_words - N_CUES) + cues
    rng.shuffle(words)
    return f"premise: {lead} {' '.join(words)} [SEP] hypothesis: {h}", label


def make_nli(n: int, seed: int, n_words: int = 6, lead: str = "the") -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [_nli_example(rng, LABELS[i % 3], n_words, lead) for i in range(n)]


def make_binary(n: int, seed: int, n_words: int = 6) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text, label = _nli_example(rng, "entailment" if i % 2 == 0 else rng.choice(LABELS[1:]), n_words, "a")
        out.append(
            (text.replace("hypothesis:", "question: is there"), "yes" if label == "entailment" else "no")
        )
    return out


def write_task(root: Path, name: str, splits: dict[str, list[tuple[str, str]]]) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with (d / f"{name}_{split}.tsv").open("w", encoding="utf-8") as fh:
            for text, label in rows:
                fh.write(f"{text}\t{label}\n")
    return d


def synthetic_tasks(
    root: str | Path, n_train: int = 2000, n_eval: int = 200, seed: int = 0
) -> dict[str, Path]:
    root = Path(root)
    out = {}
    for k, (name, maker) in enumerate(
        (
            ("tiny-nli", lambda n, s: make_nli(n, s)),
            ("tiny-nli2", lambda n, s: make_nli(n, s, n_words=8, lead="some")),
            ("tiny-binary", lambda n, s: make_binary(n, s)),
        )
    ):
        base = seed * 1000 + 10 * k
        out[name] = write_task(
            root,
            name,
            {"train": maker(n_train, base), "dev": maker(n_eval, base + 1), "test": maker(n_eval, base + 2)},
        )
    return out


def tokenizer_texts() -> list[str]:
    from lmlab.testing import default_texts

    texts = list(default_texts())
    extra = (
        [t for t, _ in make_nli(300, 99)]
        + [t for t, _ in make_nli(200, 98, 8, "some")]
        + [t for t, _ in make_binary(200, 97)]
    )
    extra += [
        "entailment neutral contradiction yes no [tiny-nli] [tiny-nli2] [tiny-binary] [glue-mnli] [anli]"
    ] * 20
    return texts + extra * 3


def build_tokenizer(path: Path):
    from lmlab.testing import train_unigram_tokenizer

    tok = train_unigram_tokenizer(tokenizer_texts(), vocab_size=1000, extra_ids=100, model_max_length=512)
    tok.save_pretrained(path)
    return tok


def build_t5(
    path: Path,
    tokenizer,
    d_model=64,
    num_layers=2,
    num_heads=4,
    d_ff=128,
    seed=0,
    pretrain_steps=0,
    dropout=0.1,
):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=dropout,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    if pretrain_steps:
        pretrain_t5(model, tokenizer, tokenizer_texts(), pretrain_steps, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def pretrain_t5(
    model,
    tokenizer,
    texts: list[str],
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-3,
):
    """A short T5-style denoising "pre-training" so the tiny PLM is not a random network (a random T5 starts
    at loss ~35 and adapter tuning then depends on luck): one random span of each text is replaced by
    `<extra_id_0>` and the target is `<extra_id_0> span </s>`."""
    import torch
    from transformers.optimization import Adafactor

    from mode_connectivity.data import collate

    rng = random.Random(seed)
    words = [t.split() for t in texts if len(t.split()) >= 4]
    opt = Adafactor(model.parameters(), lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    model.train()
    torch.manual_seed(seed)
    for step in range(steps):
        inputs, targets = [], []
        for _ in range(batch_size):
            w = rng.choice(words)[:48]
            n = rng.randint(1, min(3, len(w) - 1))
            i = rng.randrange(len(w) - n + 1)
            inputs.append(" ".join(w[:i] + ["<extra_id_0>"] + w[i + n :]))
            targets.append("<extra_id_0>" + " ".join(w[i : i + n]))
        enc = tokenizer(inputs, truncation=True, max_length=64).input_ids
        lab = tokenizer(targets, truncation=True, max_length=16).input_ids
        loss = model(**collate(enc, lab, tokenizer.pad_token_id)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            log.info(f"tiny PLM pre-training step {step}: loss {loss.item():.3f}")
    model.eval()
    return model


def write_glue(root: Path, n_train: int, n_eval: int, seed: int) -> dict[str, Path]:
    """Tiny GLUE folders in the GLUE column layout: `mnli` (premise, hypothesis, label 0..2, matched and
    mismatched validation) and `sst2` (sentence, label 0/1)."""
    out = {}
    lab = {"entailment": 0, "neutral": 1, "contradiction": 2}
    mnli = root / "mnli"
    mnli.mkdir(parents=True, exist_ok=True)
    for split, n, s, words in (
        ("train", n_train, seed + 1, 5),
        ("validation_matched", n_eval, seed + 2, 5),
        ("validation_mismatched", n_eval, seed + 3, 7),
    ):
        with (mnli / f"{split}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["premise", "hypothesis", "label"])
            for text, label in make_nli(n, s, words):
                p, h = text.split(" [SEP] hypothesis: ")
                w.writerow([p.removeprefix("premise: "), h, lab[label]])
    out["mnli"] = mnli
    sst = root / "sst2"
    sst.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed + 4), ("validation", n_eval, seed + 5)):
        rng = random.Random(s)
        with (sst / f"{split}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sentence", "label"])
            for i in range(n):
                pos = i % 2 == 0
                key = rng.choice(
                    ["happy", "rich", "light", "soft"] if pos else ["sad", "poor", "dark", "hard"]
                )
                words = rng.sample(FILLER, 4) + [key]
                rng.shuffle(words)
                w.writerow([" ".join(words), int(pos)])
    out["sst2"] = sst
    return out


def build_roberta(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4):
    from lmlab.testing import train_bpe_tokenizer

    tok = train_bpe_tokenizer(tokenizer_texts(), vocab_size=1000, style="roberta")
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=130 + tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        num_labels=3,
    )
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_make_tiny(cfg) -> dict[str, str]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out / "model")
    build_t5(
        out / "model", tok, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff, cfg.seed, cfg.pretrain_steps
    )
    tasks = synthetic_tasks(out / "data", cfg.n_train, cfg.n_eval, cfg.seed)
    result = {"model": str(out / "model"), **{k: str(v) for k, v in tasks.items()}}
    if cfg.roberta:
        build_roberta(out / "roberta" / "ckpt_0", cfg.seed)
        glue = write_glue(out / "glue", cfg.n_train, cfg.n_eval, cfg.seed)
        result.update(
            {"roberta": str(out / "roberta" / "ckpt_0"), **{f"glue_{k}": str(v) for k, v in glue.items()}}
        )
    for k, v in result.items():
        print(f"{k}: {v}")
    return result
