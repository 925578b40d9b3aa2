"""Property 16 of the spec (LAMBADA scorer, GLUE aggregation and data reading), a GLUE smoke run and bench
smoke runs (the rows of issue 13's schema)."""

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
        task="loss", preset="toy", loss_k=64, loss_v=2000, loss_d=16, rounds=3, output_dir=str(tmp_path)
    )
    run_bench(cfg)
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert (row["method"], row["baseline"]) == ("CWT", "head+CE")
    assert row["baseline_loss_matrix_elements"] == 64 * 2000 and row["method_loss_matrix_elements"] == 64 * 64
    assert row["ratio"] == pytest.approx(row["baseline_median"] / row["method_median"])  # x faster
    assert "| ratio |" in (tmp_path / "bench.md").read_text()


def _step_rows(tmp_path, **kwargs) -> list[dict]:
    common = {"vocab_size": 3000, "batch_size": 2, "seq_len": 16, "rounds": 3, "warmup_steps": 0}
    run_bench(BenchConfig(device="cpu", output_dir=str(tmp_path), **common, **kwargs))
    return json.loads((tmp_path / "bench.json").read_text())


def test_bench_model_step_smoke(tmp_path):
    # the gpu preset (here with tiny sizes on the CPU) holds the rows to issue 13's GPU targets
    (row,) = _step_rows(tmp_path, task="clm", preset="gpu", clm_arch="tiny-gpt", precision="fp32")
    assert (row["method"], row["baseline"], row["target"]) == ("headless", "vanilla", ">= 1.8")
    assert row["met"] == (row["ratio"] >= 1.8)
    assert row["baseline_params"] - row["method_params"] == 3000 * 64  # the untied head
    assert row["method_loss_matrix_elements"] == (2 * 15) ** 2
    assert row["method_tokens_per_s"] == pytest.approx(2 * 16 / row["method_median"])
    rows = _step_rows(tmp_path, task="mlm", preset="toy", mlm_arch="tiny-bert")
    assert [(r["method"], r["baseline"], r["target"]) for r in rows] == [
        ("headless", "vanilla_full", None),  # toy/cpu sizes: the GPU targets do not apply
        ("headless", "vanilla_sparse", None),
    ]
    k = math.isqrt(rows[0]["method_loss_matrix_elements"])
    assert (
        rows[0]["baseline_loss_matrix_elements"] == 2 * 16 * 3000
        and rows[1]["baseline_loss_matrix_elements"] == k * 3000
    )
    assert rows[0]["method_median"] == rows[1]["method_median"]  # one headless arm against both baselines


BENCH_KEYS = {
    "package", "measure", "method", "baseline", "method_median", "baseline_median", "method_range",
    "baseline_range", "rounds", "ratio", "target", "met",
}  # fmt: skip


def test_bench_toy_preset_through_the_console_entry(tmp_path, capsys):
    from headless_lm.cli import main

    assert main(["bench", "--preset", "toy", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert len(rows) == 6  # loss-only, decoder, encoder x 2 baselines, one vocabulary and one K sweep point
    for row in rows:
        assert set(row) >= BENCH_KEYS and row["package"] == "headless_lm"
        assert row["rounds"] >= 3  # interleaved rounds, not one timing per arm
        for arm in ("method", "baseline"):
            low, high = row[f"{arm}_range"]
            assert low <= row[f"{arm}_median"] <= high
        assert row["ratio"] == pytest.approx(row["baseline_median"] / row["method_median"])
        assert row["target"] is None and row["met"] is None  # the targets are GPU figures
        assert f"| {row['ratio']:.3f} |" in out  # the ratio is printed, not only written
        env = row["environment"]
        assert env["device"] == "cpu" and env["dtype"] == "fp32" and env["shapes"]["preset"] == "toy"
    assert "| ratio |" in out and "thread(s)" in out


def test_bench_compiled_arms(tmp_path, monkeypatch):
    import lmlab.training

    compiled = []
    monkeypatch.setattr(lmlab.training, "compile_module", lambda m, enabled: compiled.append(enabled) or m)
    run_bench(BenchConfig(task="clm", preset="toy", compile=True, output_dir=str(tmp_path)))
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert compiled == [True, True] and row["environment"]["shapes"]["compile"] is True
