"""Test fixtures every lmlab package uses: tiny tokenizers trained on the fly, tiny models from configs,
tiny data sets in a temporary folder. Nothing here touches the network."""

from lmlab.testing.data import tiny_texts, write_environments, write_jsonl_corpus, write_text_corpus
from lmlab.testing.models import HEADS, MODEL_TOKENIZER_STYLE, save_tiny_model, tiny_config, tiny_model
from lmlab.testing.tokenizers import (
    TOKENIZER_STYLES,
    default_texts,
    tiny_tokenizer,
    tiny_tokenizer_dir,
    train_bpe_tokenizer,
    train_unigram_tokenizer,
    train_wordpiece_tokenizer,
)

__all__ = [
    "HEADS",
    "MODEL_TOKENIZER_STYLE",
    "TOKENIZER_STYLES",
    "default_texts",
    "save_tiny_model",
    "tiny_config",
    "tiny_model",
    "tiny_texts",
    "tiny_tokenizer",
    "tiny_tokenizer_dir",
    "train_bpe_tokenizer",
    "train_unigram_tokenizer",
    "train_wordpiece_tokenizer",
    "write_environments",
    "write_jsonl_corpus",
    "write_text_corpus",
]
