"""Property 16 of the spec (LAMBADA scorer, GLUE aggregation and data reading), a GLUE smoke run and a bench
smoke run."""

import json
import math

import pytest
import torch
from headless_lm.bench import BenchConfig, run_bench
from headless_lm.eval.glue import aggregate, encode_pairs, read_task
from headless_lm.eval.lambada import evaluate, split_passage
from lmlab.errors import LmlabError
from lmlab.testing import tiny_model


def test_lambada_scorer_matches_independent_recomputation():
    model, tok = tiny_model("gpt_neox", "clm", attn_implementation="eager")
    model.eval()
    texts = ["the cat sat on the mat", "a dog ran far away from home today", "history of the state", "x y"]
    result = evaluate(model, tok, texts, batch_size=3)
    correct, total = 0, 0.0
    for text in texts:
        context, last = text.rsplit(" ", 1)
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        cont = tok(" " + last, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        rows = logp[len(ctx) - 1 : len(ctx) - 1 + len(cont)]
        total += sum(rows[i, t].item() for i, t in enumerate(cont))
        correct += int(rows.argmax(-1).tolist() == cont)
    assert result["n"] == 4
    assert result["acc"] == correct / 4
    assert result["ppl"] == pytest.approx(math.exp(-total / 4), rel=1e-4)
    assert split_passage("a b c") == ("a b", " c")
    with pytest.raises(LmlabError):
        split_passage("single")


def test_lambada_perplexity_overflow_is_inf():
    model, tok = tiny_model("gpt_neox", "clm", attn_implementation="eager")
    with torch.no_grad():  # every logit 0 but a huge one for token 0: any other target has NLL ~ 1e4
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[0].fill_(1e4)
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)
        model.gpt_neox.final_layer_norm.weight.zero_()
    result = evaluate(model, tok, ["the cat sat on the mat"])
    assert result["ppl"] == math.inf and result["acc"] == 0.0


def test_glue_aggregation_best_epoch_mean_seeds_rte_excluded():
    res = aggregate(
        {"mrpc": [[0.5, 0.8, 0.7], [0.6, 0.6, 0.9]], "rte": [[0.1], [0.3]], "cola": [[0.2, 0.4], [0.3, 0.1]]}
    )
    assert res["tasks"]["mrpc"]["mean"] == pytest.approx(0.85)
    assert res["tasks"]["cola"]["mean"] == pytest.approx(0.35)
    assert res["tasks"]["rte"]["mean"] == pytest.approx(0.2)
    assert res["average"] == pytest.approx((0.85 + 0.35) / 2)


def test_glue_mnli_reads_matched_and_mismatched(tmp_path):
    folder = tmp_path / "MNLI"
    folder.mkdir()
    header = "index\tsentence1\tsentence2\tgold_label\n"
    (folder / "train.tsv").write_text(header + "0\ta\tb\tneutral\n")
    (folder / "dev_matched.tsv").write_text(header + "0\ta\tb\tentailment\n1\tc\td\tneutral\n")
    (folder / "dev_mismatched.tsv").write_text(header + "0\te\tf\tcontradiction\n")
    a, b, y = read_task(tmp_path, "mnli", "dev")
    assert a == ["a", "c", "e"] and b == ["b", "d", "f"] and y == [0, 1, 2]
    with pytest.raises(LmlabError, match="no validation split of qnli"):
        read_task(tmp_path, "qnli", "dev")


def test_pairs_joined_by_eos_without_separator():
    _, tok = tiny_model("gpt_neox", "clm")
    assert tok.sep_token_id is None
    ids = encode_pairs(tok, ["hello"], ["world"], 64)[0]
    assert tok.eos_token_id in ids
    left = tok("hello", add_special_tokens=False)["input_ids"]
    assert ids[: len(left) + 1] == [*left, tok.eos_token_id]


@pytest.mark.slow
def test_glue_smoke_run_on_sample(tmp_path):
    from headless_lm.cli import main
    from lmlab.data import sample_path
    from lmlab.testing import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "bert", "bert", "base")
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "glue" / "MRPC" / f"{split}.tsv").write_text(
            sample_path(f"glue/mrpc/{split}.tsv").read_text()
        )
    out = tmp_path / "glue"
    args = [
        "glue",
        "--model",
        str(model_dir),
        "--tasks",
        "mrpc",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "2",
        "--batch_size",
        "4",
        "--data_dir",
        str(tmp_path / "glue"),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["per_epoch"]["mrpc"]) == 2 and len(res["per_epoch"]["mrpc"][0]) == 2
    assert res["average"] == pytest.approx(res["tasks"]["mrpc"]["mean"])
    assert res["protocol"]["loss"] == "balanced"


def test_bench_smoke(tmp_path):
    cfg = BenchConfig(
        task="loss", preset="cpu", loss_k=64, loss_v=2000, loss_d=16, steps=2, output_dir=str(tmp_path)
    )
    run_bench(cfg)
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = res["rows"]
    assert [r["variant"] for r in rows] == ["head+CE", "CWT"]
    assert rows[0]["loss_matrix_elements"] == 64 * 2000 and rows[1]["loss_matrix_elements"] == 64 * 64
    assert "speedup" in rows[1] and (tmp_path / "bench.md").read_text().startswith("# headless-lm bench")


def test_bench_model_step_smoke(tmp_path):
    cfg = BenchConfig(
        task="clm",
        preset="cpu",
        clm_arch="tiny-gpt",
        vocab_size=3000,
        batch_size=2,
        seq_len=16,
        steps=1,
        output_dir=str(tmp_path),
    )
    run_bench(cfg)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["headless", "vanilla"]
    assert rows[1]["params"] - rows[0]["params"] == 3000 * 64  # the untied head
    assert rows[0]["K"] == 2 * 15
    cfg = BenchConfig(
        task="mlm",
        preset="cpu",
        mlm_arch="tiny-bert",
        vocab_size=3000,
        batch_size=2,
        seq_len=16,
        steps=1,
        output_dir=str(tmp_path),
    )
    run_bench(cfg)
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["headless", "vanilla_full", "vanilla_sparse"]
    assert (
        rows[1]["loss_matrix_elements"] == 2 * 16 * 3000
        and rows[2]["loss_matrix_elements"] == rows[0]["K"] * 3000
    )
