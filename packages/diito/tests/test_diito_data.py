"""Data pipeline (spec 11: 12, round trips, restricted pickles) and student extraction (11: 11)."""

import json
import pickle

import numpy as np
import pytest
import torch
from diito.cli import main
from diito.data.binarized import (
    from_sequences,
    load_binarized,
    load_legacy_pickle,
    load_token_counts,
    save_binarized,
)
from diito.data.dataset import GroupedBatchSampler, PairedSeqDataset, split_long
from diito.extract import DEFAULT_LAYERS
from lmlab.data import sample_path
from lmlab.errors import LmlabError
from lmlab.testing import save_tiny_model, write_text_corpus

CLS, SEP, UNK = 101, 102, 100


def _seq(n):
    return np.concatenate([[CLS], np.arange(1000, 1000 + n - 2) % 30000 + 200, [SEP]])


def test_split_long_sequences():
    assert [len(p) for p in split_long(_seq(600), 512, CLS, SEP)] == [511, 91]
    pieces = split_long(_seq(1100), 512, CLS, SEP)
    assert [len(p) for p in pieces] == [511, 512, 81]
    assert all(p[0] == CLS and p[-1] == SEP for p in pieces)
    assert len(split_long(_seq(512), 512, CLS, SEP)) == 1


def test_dataset_drops_short_and_unk_and_pairs_reproducibly():
    seqs = [_seq(11), _seq(12), _seq(30), np.array([CLS] + [UNK] * 11 + [5] * 8 + [SEP]), _seq(50), _seq(600)]
    ds = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=3)
    assert sorted(ds.lengths.tolist()) == [12, 30, 50, 91, 511]
    assert ds.n_short == 1 and ds.n_unk == 1
    ds2 = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=3)
    assert np.array_equal(ds.pairing, ds2.pairing)
    assert sorted(ds.pairing.tolist()) == list(range(len(ds)))
    _, base, partner = ds[(7, 0, 2)]
    assert np.array_equal(partner, ds.seqs[ds.pairing[2]])
    with pytest.raises(LmlabError, match="no sequence left"):
        PairedSeqDataset([_seq(5)], CLS, SEP, UNK)


@pytest.mark.parametrize("group", [True, False])
def test_grouped_sampler_covers_every_index_once(group):
    rng = np.random.default_rng(0)
    lengths = rng.integers(12, 24, size=103)  # three length buckets
    sampler = GroupedBatchSampler(lengths, batch_size=8, seed=1, group_by_size=group)
    batches = sampler.epoch_batches(0)
    assert len(batches) == sampler.batches_per_epoch() == 13
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103))
    if group:
        bins = sampler.bins
        import bisect

        full_single_bucket = [
            b for b in batches if len({bisect.bisect_right(bins, int(lengths[i])) for i in b}) == 1
        ]
        assert len(full_single_bucket) >= 5  # buffers that filled up are single-bucket batches
    # exact resume: starting at batch 5 continues the same stream
    it = iter(sampler)
    stream = [next(it) for _ in range(20)]
    resumed = iter(GroupedBatchSampler(lengths, batch_size=8, seed=1, group_by_size=group, start=5))
    assert [next(resumed) for _ in range(15)] == stream[5:]
    # two ranks split the stream
    r0 = iter(GroupedBatchSampler(lengths, 8, seed=1, group_by_size=group, rank=0, world_size=2))
    r1 = iter(GroupedBatchSampler(lengths, 8, seed=1, group_by_size=group, rank=1, world_size=2))
    assert [next(r0) for _ in range(3)] + [next(r1) for _ in range(3)] == [
        stream[0],
        stream[2],
        stream[4],
        stream[1],
        stream[3],
        stream[5],
    ]


def _epoch_pairs(ds, keys_by_batch, bpe):
    """{epoch: {base index: partner index}} from the items the dataset returns for a stream of batches (every
    sequence has its own length, so a partner's length names it)."""
    pairs: dict[int, dict[int, int]] = {}
    for batch in keys_by_batch:
        for batch_no, epoch, i in batch:
            assert epoch == batch_no // bpe  # the key's epoch is the stream's pass over the data
            _, base, partner = ds[(batch_no, epoch, i)]
            assert len(base) == len(ds.seqs[i])
            pairs.setdefault(epoch, {})[i] = len(partner) - 12
    return pairs


@pytest.mark.parametrize("repair", [False, True])
def test_pairing_is_redrawn_each_epoch_only_with_repair_each_epoch(repair):
    seqs = [_seq(12 + k) for k in range(40)]
    ds = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=4, repair_each_epoch=repair)
    sampler = GroupedBatchSampler(ds.lengths, batch_size=6, seed=4)
    bpe = sampler.batches_per_epoch()  # 7 batches, the last one partial
    it = iter(sampler)
    stream = [next(it) for _ in range(3 * bpe)]
    pairs = _epoch_pairs(ds, stream, bpe)
    perms = [[pairs[e][i] for i in range(len(ds))] for e in range(3)]
    for perm in perms:
        assert sorted(perm) == list(range(len(ds)))  # a permutation every epoch
    assert perms[0] == ds.pairing.tolist()  # the first epoch keeps the run's one pairing
    if repair:
        assert perms[0] != perms[1] and perms[1] != perms[2] and perms[0] != perms[2]
        again = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=4, repair_each_epoch=True)
        assert _epoch_pairs(again, stream, bpe) == pairs  # reproducible from the seed
        other = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=5, repair_each_epoch=True)
        assert [other.pairing_for(1)[i] for i in range(len(ds))] != perms[1]
    else:
        assert perms[0] == perms[1] == perms[2]
    # resuming mid-epoch 1 with a fresh dataset draws the same pairs as the uninterrupted stream
    start = bpe + 2
    resumed = iter(GroupedBatchSampler(ds.lengths, batch_size=6, seed=4, start=start))
    fresh = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=4, repair_each_epoch=repair)
    tail = [next(resumed) for _ in range(3 * bpe - start)]
    assert tail == stream[start:]
    for keys in tail:
        assert [len(fresh[k][2]) for k in keys] == [len(ds[k][2]) for k in keys]


def test_binarize_token_counts_round_trip(tmp_path):
    save_tiny_model(tmp_path / "tok", "bert", "mlm")
    corpus = write_text_corpus(tmp_path, n=30)
    assert (
        main(
            [
                "binarize",
                "--input",
                str(corpus),
                "--tokenizer_name",
                str(tmp_path / "tok"),
                "--dump_file",
                str(tmp_path / "bin"),
            ]
        )
        == 0
    )
    path = tmp_path / "bin.train.tok.npz"
    data = load_binarized(path)
    assert len(data) == 30 and data.ids.dtype == np.uint16
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    texts = corpus.read_text().splitlines()
    expected = sorted(
        [tok.cls_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.sep_token_id] for t in texts
    )
    assert sorted(s.tolist() for s in data.sequences()) == expected
    assert (
        main(["token-counts", "--data_file", str(path), "--token_counts_dump", str(tmp_path / "c.npy")]) == 0
    )
    counts = load_token_counts(tmp_path / "c.npy")
    assert len(counts) == len(tok) and counts.sum() == len(data.ids)
    assert np.array_equal(counts, np.bincount(np.concatenate(expected), minlength=len(tok)))
    assert main(["combine", "--inputs", str(path), str(path), "--output", str(tmp_path / "both.npz")]) == 0
    both = load_binarized(tmp_path / "both.npz")
    assert len(both) == 60 and sorted(s.tolist() for s in both.sequences()) == sorted(expected * 2)


def test_shipped_wikipedia_sample_counts_match():
    seqs = [
        json.loads(line)
        for line in sample_path("wikipedia-bert-ids/sequences.jsonl").read_text().splitlines()
    ]
    data = from_sequences(seqs, 30522, {"cls": CLS, "sep": SEP})
    counts = load_token_counts(sample_path("wikipedia-bert-ids/token_counts.json"), 30522)
    assert np.array_equal(np.bincount(data.ids.astype(np.int64), minlength=30522), counts)


def test_legacy_pickle_loader_allows_arrays_and_refuses_globals(tmp_path):
    arrays = [np.array([101, 5, 102], dtype=np.uint16), np.array([101, 102], dtype=np.uint16)]
    good = tmp_path / "data.pickle"
    good.write_bytes(pickle.dumps(arrays))
    loaded = load_legacy_pickle(good)
    assert [a.tolist() for a in loaded] == [[101, 5, 102], [101, 102]]

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pickle"
    bad.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(LmlabError, match="refusing to unpickle"):
        load_legacy_pickle(bad)
    assert main(["binarize", "--import_legacy_pickle", str(bad)]) == 1
    assert main(["binarize", "--import_legacy_pickle", str(good)]) == 0
    assert len(load_binarized(tmp_path / "data.npz")) == 2


def test_empty_binarized_file_is_an_error(tmp_path):
    save_binarized(from_sequences([], 100, {"cls": 1}), tmp_path / "e.npz")
    with pytest.raises(LmlabError, match="holds no sequence"):
        load_binarized(tmp_path / "e.npz")


@pytest.mark.parametrize("n", [3, 6, 9])
def test_extract_copies_exactly_the_named_layers(tmp_path, n):
    from transformers import BertForMaskedLM, DistilBertForMaskedLM

    save_tiny_model(tmp_path / "teacher", "bert", "mlm", layers=12, hidden=32, heads=2)
    assert (
        main(
            [
                "extract",
                "--teacher_name",
                str(tmp_path / "teacher"),
                "--dump_checkpoint",
                str(tmp_path / "s"),
                "--num_layers",
                str(n),
            ]
        )
        == 0
    )
    teacher = BertForMaskedLM.from_pretrained(tmp_path / "teacher")
    student, info = DistilBertForMaskedLM.from_pretrained(tmp_path / "s", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert student.config.n_layers == n
    layers = DEFAULT_LAYERS[n]
    pairs = {
        "attention.q_lin": "attention.self.query",
        "attention.k_lin": "attention.self.key",
        "attention.v_lin": "attention.self.value",
        "attention.out_lin": "attention.output.dense",
        "sa_layer_norm": "attention.output.LayerNorm",
        "ffn.lin1": "intermediate.dense",
        "ffn.lin2": "output.dense",
        "output_layer_norm": "output.LayerNorm",
    }
    for i, k in enumerate(layers):
        s_block = student.distilbert.transformer.layer[i]
        t_block = teacher.bert.encoder.layer[k]
        for s_name, t_name in pairs.items():
            for attr in ("weight", "bias"):
                assert torch.equal(
                    getattr(s_block.get_submodule(s_name), attr), getattr(t_block.get_submodule(t_name), attr)
                )
        # and it differs from a neighbouring teacher layer (layers were really chosen)
        other = teacher.bert.encoder.layer[(k + 1) % 12]
        assert not torch.equal(s_block.ffn.lin1.weight, other.intermediate.dense.weight)
    se, te = student.distilbert.embeddings, teacher.bert.embeddings
    assert torch.equal(se.word_embeddings.weight, te.word_embeddings.weight)
    assert torch.equal(se.position_embeddings.weight, te.position_embeddings.weight)
    assert torch.equal(se.LayerNorm.weight, te.LayerNorm.weight)
    head = teacher.cls.predictions
    assert torch.equal(student.vocab_projector.bias, head.bias)
    assert torch.equal(student.vocab_transform.weight, head.transform.dense.weight)
    assert torch.equal(student.vocab_layer_norm.weight, head.transform.LayerNorm.weight)


def test_extract_same_architecture_gpt2(tmp_path):
    from transformers import GPT2LMHeadModel

    save_tiny_model(tmp_path / "t", "gpt2", "clm", layers=4)
    assert (
        main(
            [
                "extract",
                "--teacher_name",
                str(tmp_path / "t"),
                "--dump_checkpoint",
                str(tmp_path / "s"),
                "--layers",
                "1",
                "3",
                "--student_type",
                "same",
            ]
        )
        == 0
    )
    t = GPT2LMHeadModel.from_pretrained(tmp_path / "t")
    s = GPT2LMHeadModel.from_pretrained(tmp_path / "s")
    assert s.config.n_layer == 2
    assert torch.equal(s.transformer.h[1].mlp.c_fc.weight, t.transformer.h[3].mlp.c_fc.weight)
    assert torch.equal(s.transformer.ln_f.weight, t.transformer.ln_f.weight)
    assert (
        main(
            [
                "extract",
                "--teacher_name",
                str(tmp_path / "t"),
                "--dump_checkpoint",
                str(tmp_path / "x"),
                "--layers",
                "7",
            ]
        )
        == 1
    )


def test_collator_pads_truncates_partners_and_is_seeded_per_batch():
    import torch
    from diito.data.dataset import Collator, CollatorOptions
    from diito.masking import token_weights

    seqs = [_seq(20), _seq(40), _seq(15), _seq(60)]
    ds = PairedSeqDataset(seqs, CLS, SEP, UNK, 512, seed=0)
    ds.pairing = np.array([3, 2, 1, 0])  # row 0's partner (60 ids) is longer than the batch
    w = token_weights(torch.ones(32000, dtype=torch.long), [0, CLS, SEP, 103, UNK])
    opts = CollatorOptions(
        mlm=True, causal=True, interchange_masked_token_only=True, entry_sizes=((1, 1), (1, 1)), seed=5
    )
    col = Collator(opts, pad_id=0, mask_id=103, vocab_size=32000, weights=w)
    items = [ds[(7, 0, 0)], ds[(7, 0, 1)], ds[(7, 0, 2)]]  # base lengths 20, 40, 15 -> T = 40
    b = col(items)
    assert b["base_ids"].shape == b["src_ids"].shape == (3, 40)
    assert b["base_len"].tolist() == [20, 40, 15]
    assert b["src_len"].tolist() == [40, 15, 40]  # the 60-id partner is cut to T (and loses its [SEP])
    assert (b["labels"][b["base_mask"] == 0] == -100).all()
    assert (b["P"] <= b["selected"]).all() and torch.equal(b["P"].sum(1), b["Ps"].sum(1))
    assert not (b["Ps"] & (b["src_mask"] == 0)).any()
    assert isinstance(b["entry"], tuple) and len(b["entry"]) == 3
    again = col(items)
    assert (
        all(torch.equal(b[k], again[k]) for k in ("base_ids", "src_ids", "P", "Ps"))
        and b["entry"] == again["entry"]
    )
    other = col([(8, *it[1:]) for it in items])  # another batch number -> other masks
    assert not torch.equal(b["base_ids"], other["base_ids"])


def test_binarize_tables_are_read_strictly(tmp_path, capsys):
    save_tiny_model(tmp_path / "tok", "bert", "mlm")

    def binarize(path, *extra):
        argv = ["binarize", "--input", str(path), "--tokenizer_name", str(tmp_path / "tok"), "--dump_file"]
        code = main([*argv, str(tmp_path / "bin"), *extra])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, err

    out = tmp_path / "bin.train.tok.npz"
    shifted = tmp_path / "shifted.csv"  # pandas would take the first column as an index and shift the rest
    shifted.write_text("text,source\nthe cat sat,a,extra\nthe dog ran,b\n")
    code, err = binarize(shifted)
    assert code == 1 and f"{shifted}, line 2: 3 fields where the header has 2" in err and not out.exists()
    gaps = tmp_path / "gaps.csv"
    gaps.write_text('text,source\nthe cat sat,a\n"",b\n  ,c\nnan,d\n')
    code, err = binarize(gaps)
    assert code == 0 and "dropped 2 of 4 rows whose 'text' is empty (first: row 2)" in err
    assert len(load_binarized(out)) == 2  # "nan" is a text like any other, never a missing value
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": "the cat sat"}\n{"text": 3.5}\n')
    code, err = binarize(numbers)
    assert code == 1 and "row 2: column 'text' holds float 3.5, not text" in err
    code, err = binarize(gaps, "--preprocessing_num_workers", "0")
    assert code == 2 and "--preprocessing_num_workers must be >= 1, got 0" in err


class _Payload:
    """Unpickling this creates the marker file (a stand-in for what a crafted file would run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_crafted_data_files_are_refused_and_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = np.array([_Payload(marker)], dtype=object)
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps([_Payload(marker)]))
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", ids=evil, offsets=np.array([0, 1]))
    runs = [
        ["binarize", "--import_legacy_pickle", str(tmp_path / "evil.pickle")],
        ["token-counts", "--data_file", str(tmp_path / "evil.npz")],
        ["combine", "--inputs", str(tmp_path / "evil.npz"), str(tmp_path / "evil.npz")],
    ]
    for argv in runs:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for path in ("evil.npy", "evil.pickle"):
        with pytest.raises(LmlabError):
            load_token_counts(tmp_path / path)
    assert not marker.exists()
