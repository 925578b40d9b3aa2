"""lmlab.testing: the tiny tokenizers and models every package's tests stand on."""

import json
import subprocess
import sys

import pytest
import torch
from lmlab.testing import (
    HEADS,
    MODEL_TOKENIZER_STYLE,
    TOKENIZER_STYLES,
    save_tiny_model,
    tiny_model,
    tiny_texts,
    tiny_tokenizer,
    train_bpe_tokenizer,
    write_environments,
    write_jsonl_corpus,
    write_text_corpus,
)
from lmlab.testing.trace_batches import run_traced
from transformers import AutoModel, AutoTokenizer

TEXT = "The cat sat on the mat."


def test_wordpiece_is_bert_style():
    tok = tiny_tokenizer("wordpiece")
    ids = tok(TEXT)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.pad_token_id == 0 and tok.mask_token is not None
    assert tok.decode(ids, skip_special_tokens=True).replace(" .", ".") == TEXT.lower()
    pair = tok("a b", "c")["input_ids"]
    assert pair.count(tok.sep_token_id) == 2


def test_bpe_styles():
    rob = tiny_tokenizer("roberta")
    ids = rob(TEXT)["input_ids"]
    assert ids[0] == rob.bos_token_id and ids[-1] == rob.eos_token_id and rob.mask_token == "<mask>"
    assert rob.decode(ids, skip_special_tokens=True) == TEXT
    gpt = tiny_tokenizer("gpt2")
    ids = gpt(TEXT)["input_ids"]
    assert gpt.decode(ids) == TEXT and gpt.eos_token == "<|endoftext|>" and gpt.pad_token == "<pad>"
    with pytest.raises(ValueError, match="style"):
        train_bpe_tokenizer(["x"], style="bert")


def test_unigram_is_t5_style():
    tok = tiny_tokenizer("t5")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(TEXT)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel == len(tok) - 100 and tok.convert_tokens_to_ids("<extra_id_99>") == len(tok) - 1
    assert tok.decode(ids, skip_special_tokens=True) == TEXT


def test_tokenizer_cached_but_fresh_copies():
    a, b = tiny_tokenizer("gpt2"), tiny_tokenizer("gpt2")
    a.add_tokens(["<new>"])
    assert len(b) == len(a) - 1


@pytest.mark.parametrize("arch", sorted(MODEL_TOKENIZER_STYLE))
def test_every_tiny_model_runs_and_is_deterministic(arch):
    head = {"t5": "seq2seq", "gpt2": "clm", "gpt_neox": "clm", "llama": "clm"}.get(arch, "mlm")
    model, tok = tiny_model(arch, head)
    again, _ = tiny_model(arch, head)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    assert model.config.vocab_size == len(tok)
    batch = tok([TEXT, "short"], padding=True, return_tensors="pt")
    kwargs = {"labels": batch["input_ids"]} if arch == "t5" else {}
    out = model(**batch, **kwargs)
    assert out.logits.shape[-1] == len(tok) and torch.isfinite(out.logits).all()
    assert sum(p.numel() for p in model.parameters()) < 200_000


def test_heads_and_overrides():
    model, _ = tiny_model("bert", "seq_cls", num_labels=3, hidden=64, layers=1)
    assert (
        model.config.num_labels == 3
        and model.config.hidden_size == 64
        and model.config.num_hidden_layers == 1
    )
    assert set(HEADS) >= {"mlm", "clm", "seq2seq", "seq_cls", "token_cls", "base"}
    with pytest.raises(ValueError, match="unknown head"):
        tiny_model("bert", "qa")
    with pytest.raises(ValueError, match="unknown architecture"):
        tiny_model("bart", "mlm", tokenizer=tiny_tokenizer("roberta"))


def test_saved_tiny_model_reloads_offline(tmp_path):
    path = save_tiny_model(tmp_path / "m", "roberta", "mlm")
    model = AutoModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "roberta" and tok.mask_token == "<mask>"


def test_tiny_data_writers(tmp_path):
    texts = tiny_texts(200)
    assert len(texts) == 200 and all(len(t.split()) >= 8 for t in texts)
    assert write_text_corpus(tmp_path, n=5).read_text().count("\n") == 5
    assert write_jsonl_corpus(tmp_path, n=3).read_text().count("\n") == 3
    envs = write_environments(tmp_path / "envs", ("a", "b", "c"), n=2)
    assert sorted(p.name for p in envs.iterdir()) == ["a.txt", "b.txt", "c.txt"]


TRACED_MODULE = """
import sys
import torch

class Module:
    global_rank = 0

    def train_dataloader(self):
        return torch.utils.data.DataLoader(list(range(7)), batch_size=3, collate_fn=lambda b: b)

def main(argv):
    if argv == ["fail"]:
        print("bad input", file=sys.stderr)
        return 1
    return int(sum(sum(b) for b in Module().train_dataloader()) != 21)
"""


def test_run_traced_records_every_batch_per_rank_and_reports_failures(tmp_path, monkeypatch):
    (tmp_path / "traced_pkg.py").write_text(TRACED_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    traces = run_traced("traced_pkg:Module", "traced_pkg:main", [], tmp_path / "trace")
    assert traces == {"rank0": [[0, 1, 2], [3, 4, 5], [6]]}
    with pytest.raises(AssertionError, match="exited 1:\nbad input"):
        run_traced("traced_pkg:Module", "traced_pkg:main", ["fail"], tmp_path / "trace2")


VOCABS = """
import json, sys
from lmlab.testing import tiny_tokenizer
json.dump({s: tiny_tokenizer(s).get_vocab() for s in sys.argv[1:]}, sys.stdout)
"""


def test_tokenizers_are_the_same_in_every_process():
    # the tokenizers trainers break ties in hash order (WordPiece's ## pieces, Unigram's scores): two fresh
    # processes must still build identical vocabularies, so runs and reproductions are repeatable
    def vocabs():
        out = subprocess.run(
            [sys.executable, "-c", VOCABS, *TOKENIZER_STYLES], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    first, second = vocabs(), vocabs()
    assert first == second
    assert all(len(v) > 500 for v in first.values())
