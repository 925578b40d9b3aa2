"""Tiny tokenizers trained on the fly (well under a second) with the `tokenizers` library.

Three styles cover every model family the packages test: WordPiece (BERT, DistilBERT), byte-level BPE
(RoBERTa with `<s>`/`</s>`/`<mask>`, GPT-2/GPT-NeoX/Llama with `<|endoftext|>`), and Unigram with T5's
`<extra_id_N>` sentinels. Each returns a `PreTrainedTokenizerFast` that round-trips through
`save_pretrained` / `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from lmlab.data import sample_path

TOKENIZER_STYLES = ("wordpiece", "roberta", "gpt2", "t5")


def default_texts() -> list[str]:
    """Real English text for tokenizer training: the paragraphs of the shipped WikiText sample."""
    text = sample_path("wikitext/wiki_00.txt").read_text(encoding="utf-8")
    extra = sample_path("wikitext/sample_text.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in (text + "\n" + extra).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("<")]


def _wrap(tok: Tokenizer, model_max_length: int, **special: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special)


def train_wordpiece_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 1000, model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """BERT-style uncased WordPiece: `[CLS] a [SEP] b [SEP]`, with `[PAD]`, `[UNK]`, `[MASK]`.

    The same in every process: the `tokenizers` WordPiece trainer numbers its `##` pieces in hash order, so its
    vocabulary changes from one process to the next. Here a BPE vocabulary of (vocab_size - 5) / 2 pieces is
    learned (deterministic), and each piece enters the WordPiece vocabulary twice: as a word start and as a
    `##` continuation."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.normalizer, bpe.pre_tokenizer = normalizer, pre_tokenizer
    n_pieces = (vocab_size - len(specials)) // 2
    trainer = trainers.BpeTrainer(vocab_size=len(specials) + n_pieces, special_tokens=specials)
    bpe.train_from_iterator(list(texts or default_texts()), trainer=trainer)
    by_id = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    pieces = [piece for piece, _ in by_id if piece not in specials]
    words = specials + pieces + [f"##{piece}" for piece in pieces]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(specials)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return _wrap(
        tok,
        model_max_length,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = 1000,
    style: str = "roberta",
    model_max_length: int = 128,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE. `style="roberta"`: `<s> a </s>` with `<pad>`, `<unk>`, `<mask>`;
    `style="gpt2"`: no added tokens around the text, `<|endoftext|>` as bos/eos/unk and a `<pad>` token."""
    if style not in ("roberta", "gpt2"):
        raise ValueError(f"style must be 'roberta' or 'gpt2', got {style!r}")
    specials = (
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if style == "roberta" else ["<|endoftext|>", "<pad>"]
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts or default_texts()), trainer=trainer)
    if style == "roberta":
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), add_prefix_space=False
        )
        return _wrap(
            tok,
            model_max_length,
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token="<mask>",
        )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return _wrap(
        tok,
        model_max_length,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )


def train_unigram_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = 1000,
    extra_ids: int = 100,
    model_max_length: int = 128,
) -> PreTrainedTokenizerFast:
    """T5-style Unigram: `<pad>`=0, `</s>`=1, `<unk>`=2, `</s>` appended, `<extra_id_0..N-1>` sentinels last.

    The trainer's scores vary in their last digits between processes (parallel sums), and the single characters
    it adds at the end get scores 1e-4 apart in hash order: scores are rounded to 2 decimals and the pieces
    renumbered by (score, piece), so that the vocabulary and the segmentation are the same in every process."""
    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(list(texts or default_texts()), trainer=trainer)
    scored = json.loads(tok.to_str())["model"]["vocab"]  # [[piece, score], ...], the specials first
    head = [(piece, round(score, 2)) for piece, score in scored if piece in specials]
    rest = sorted(((p, round(s, 2)) for p, s in scored if p not in specials), key=lambda v: (-v[1], v[0]))
    tok.model = models.Unigram(head + rest, unk_id=specials.index("<unk>"), byte_fallback=False)
    sentinels = [f"<extra_id_{i}>" for i in range(extra_ids)]
    tok.add_special_tokens(sentinels)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return _wrap(
        tok,
        model_max_length,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=sentinels,
    )


@cache
def tiny_tokenizer_dir(style: str, vocab_size: int = 1000) -> Path:
    """A folder holding a trained tiny tokenizer of `style` (one of TOKENIZER_STYLES); trained once per process."""
    if style == "wordpiece":
        tok = train_wordpiece_tokenizer(vocab_size=vocab_size)
    elif style in ("roberta", "gpt2"):
        tok = train_bpe_tokenizer(vocab_size=vocab_size, style=style)
    elif style == "t5":
        tok = train_unigram_tokenizer(vocab_size=vocab_size)
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; choose from {TOKENIZER_STYLES}")
    out = Path(tempfile.mkdtemp(prefix=f"lmlab-tok-{style}-"))
    tok.save_pretrained(out)
    return out


def tiny_tokenizer(style: str, vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A fresh copy of the cached tiny tokenizer of `style` (safe to modify: each call loads it anew)."""
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir(style, vocab_size))
