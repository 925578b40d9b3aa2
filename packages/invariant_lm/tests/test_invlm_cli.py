"""CLI, IO and data (spec §6 P11, P12, P14, bad input): train/eval/export end to end on a tiny saved model,
round trips, exact resume, environment discovery, masking statistics, one-line errors."""

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from invariant_lm.cli import main
from invariant_lm.model import InvariantMLM
from lmlab.testing import save_tiny_model, tiny_tokenizer, write_environments, write_text_corpus
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("invlm")
    save_tiny_model(root / "model", "roberta", hidden_dropout_prob=0.1)
    write_environments(root / "envs", ("b_env", "a_env"), n=24)
    write_text_corpus(root, "valid.txt", n=12)
    return root


def _train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(root / "model"), "--train_file", str(root / "envs"),
            "--validation_file", str(root / "valid.txt"), "--do_train", "--do_eval", "--nb_steps", "4",
            "--learning_rate", "1e-3", "--output_dir", str(out), "--seed", "123", "--overwrite_cache",
            "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--logging_steps", "1",
            "--save_steps", "2", "--progress_bar", "false", "--logger", "none", *extra]  # fmt: skip


@pytest.mark.slow
def test_train_eval_export_end_to_end(workdir, capsys):
    out = workdir / "run"
    assert main(_train_args(workdir, out, "--eval_per_head")) == 0
    for name in ("config.yaml", "metrics.jsonl", "train_log.jsonl", "results.json", "report.md", "DONE",
                 "checkpoints/last.ckpt", "tokenizer.json", "model/config.json", "model/invariant_config.json",
                 "model/model.safetensors", "model/heads.safetensors", "model/tokenizer.json"):  # fmt: skip
        assert (out / name).exists(), name
    inv = json.loads((out / "model" / "invariant_config.json").read_text())
    assert inv["envs"] == ["a_env", "b_env"] and inv["mode"] == "irm"
    # IRM heads differ (no exact single head): model/ is the body for AutoModel, each weight stored once
    assert inv["hf_export"] == "body"
    body_keys = load_file(str(out / "model" / "model.safetensors")).keys()
    head_keys = load_file(str(out / "model" / "heads.safetensors")).keys()
    assert not any(k.startswith(("body.", "heads.", "a_env", "b_env")) for k in body_keys)
    assert {k.split(".")[0] for k in head_keys} == {"a_env", "b_env"}
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["env"] for r in log] == ["a_env", "b_env", "a_env", "b_env"]
    results = json.loads((out / "results.json").read_text())
    assert results["train"]["updates"] == 4
    train_eval = results["eval"]
    res = next(iter(train_eval.values()))
    assert math.isclose(res["perplexity"], math.exp(res["eval_loss"]))
    assert set(res["per_head_perplexity"]) == {"a_env", "b_env"}
    assert f"{res['perplexity']:.6g}" in (out / "report.md").read_text()
    # eval on the saved model reproduces the training-time evaluation exactly (fixed masks)
    ev = workdir / "ev"
    assert main(["eval", "--model_name_or_path", str(out), "--validation_file", str(workdir / "valid.txt"),
                 "--max_seq_length", "32", "--output_dir", str(ev), "--eval_per_head"]) == 0  # fmt: skip
    again = json.loads((ev / "results.json").read_text())
    assert (ev / "report.md").is_file() and (ev / "DONE").is_file()
    assert next(iter(again.values())) == res
    # the Lightning checkpoint evaluates the same
    ck = main(["eval", "--model_name_or_path", str(out / "checkpoints" / "last.ckpt"),
               "--validation_file", str(workdir / "valid.txt"), "--max_seq_length", "32"])  # fmt: skip
    assert ck == 0 and f"{res['perplexity']:.4f}" in capsys.readouterr().out
    # export: IRM heads differ, so the HF folder is the body (AutoModel loads it), the heads beside it
    from transformers import AutoModel

    exp = workdir / "exp"
    assert main(["export", "--model_name_or_path", str(out), "--output_dir", str(exp)]) == 0
    body = AutoModel.from_pretrained(exp)
    model = InvariantMLM.from_pretrained(out)  # a run folder: its model/
    assert torch.equal(body.embeddings.word_embeddings.weight, model.body.embeddings.word_embeddings.weight)
    back = InvariantMLM.from_pretrained(exp)
    assert back.env_names == ["a_env", "b_env"]
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    # a finished run is not clobbered
    assert main(_train_args(workdir, out)) == 1


@pytest.mark.slow
def test_cli_fp16_overflows_resume_exactly(workdir, monkeypatch):
    from invariant_lm.commands import run_train
    from invariant_lm.config import TRAIN_ALIASES, TrainConfig
    from lmlab.cli import Command, _field_types, build_config, parse_argv

    # start at a scale the tiny model's fp16 gradients overflow at, so the Lightning path redoes updates
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**24))

    def cfg(out):
        argv = _train_args(workdir, out, "--fp16", "--no_cuda")[1:]
        return build_config(
            Command("train", TrainConfig, run_train),
            parse_argv(argv, _field_types(TrainConfig), TRAIN_ALIASES),
        )

    full, part = workdir / "fp16_full", workdir / "fp16_part"
    run_train(cfg(full))
    log = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    assert [r["update"] for r in log] == [1, 2, 3, 4]
    ckpt = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["invariant"]["grad_scaler"]["scale"] < 2.0**24
    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # redone updates log once, with the scale they ran at
    assert rows[0]["loss_scale"] < 2.0**24
    assert run_train(cfg(part), _stop_after=2) == {"stopped_at": 2}
    run_train(cfg(part))
    a, b = (InvariantMLM.from_pretrained(d).state_dict() for d in (full, part))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_load_round_trip(tmp_path):
    from invariant_lm._testing import tiny

    base, tok = tiny("distilbert")
    model = InvariantMLM.from_base(base, ["x", "y"], init_head=True).eval()
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    back = InvariantMLM.from_pretrained(tmp_path / "m", map_location="cpu").eval()
    assert back.env_names == ["x", "y"]
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randint(5, 900, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, back(input_ids=x).logits)


def test_export_folds_identical_heads_into_one_hf_head(tmp_path):
    from invariant_lm._testing import tiny
    from transformers import AutoModelForMaskedLM

    base, tok = tiny("bert")
    model = InvariantMLM.from_base(base, ["x", "y", "z"]).eval()
    with torch.no_grad():  # same transform, different decoders and biases: still exactly one head
        for h in model.heads.values():
            h.weight.add_(torch.randn_like(h.weight) * 0.1)
            h.bias.add_(torch.randn_like(h.bias) * 0.1)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    assert (
        main(["export", "--model_name_or_path", str(tmp_path / "m"), "--output_dir", str(tmp_path / "hf")])
        == 0
    )
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(5, 900, (2, 9))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=x).logits, model(input_ids=x).logits, atol=1e-5)


def test_environment_discovery(tmp_path):
    from invariant_lm.data import load_environments

    (tmp_path / "zeta.train.txt").write_text("one line\n")
    (tmp_path / "alpha.txt").write_text("a\n\nb\n")
    (tmp_path / "notes.md").write_text("ignored")
    envs = load_environments(tmp_path)
    assert list(envs) == ["alpha", "zeta"] and envs["alpha"]["text"] == ["a", "b"]
    (tmp_path / "zeta.txt").write_text("clash\n")
    with pytest.raises(Exception, match="both give environment 'zeta'"):
        load_environments(tmp_path)


def test_grouped_blocks_and_masking_statistics():
    from datasets import Dataset
    from invariant_lm.data import eval_batches, make_collator, tokenize
    from lmlab.testing import tiny_texts

    tok = tiny_tokenizer("wordpiece")
    ds = tokenize(Dataset.from_dict({"text": tiny_texts(40)}), tok, 16)
    assert all(len(r) == 16 for r in ds["input_ids"])
    col = make_collator(tok)
    special = torch.tensor(tok.all_special_ids)
    rows = [[tok.cls_token_id] + list(range(10, 10 + n)) + [tok.sep_token_id] for n in (30, 12, 5)] * 200
    b = col(rows, generator=torch.Generator().manual_seed(0))
    sel = b["labels"] != -100
    assert not sel[b["attention_mask"] == 0].any()
    assert not torch.isin(torch.tensor(rows[0]), special)[1:-1].any()
    assert not sel[:, 0].any()  # [CLS] never selected
    n = int((b["attention_mask"].sum(1) - 2).sum())
    rate = sel.sum().item() / n
    assert abs(rate - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
    masked = (b["input_ids"] == tok.mask_token_id) & sel
    assert abs(masked.sum().item() / sel.sum().item() - 0.8) < 0.05
    e1 = eval_batches(ds, col, 8, mask_seed=7)
    e2 = eval_batches(ds, col, 8, mask_seed=7)
    assert all(
        torch.equal(x["labels"], y["labels"]) and torch.equal(x["input_ids"], y["input_ids"])
        for x, y in zip(e1, e2)
    )


def test_bad_input_one_line_errors(tmp_path, capsys):
    save_tiny_model(tmp_path / "model", "bert")
    env = tmp_path / "envs"
    env.mkdir()
    base = ["train", "--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "o"),
            "--nb_steps", "2", "--progress_bar", "false", "--max_seq_length", "8"]  # fmt: skip
    assert main([*base, "--train_file", str(env)]) == 1
    assert "holds no .txt file" in capsys.readouterr().err
    (env / "a.txt").write_text("\n\n")
    assert main([*base, "--train_file", str(env)]) == 1
    assert "a.txt is empty" in capsys.readouterr().err
    (env / "a.txt").write_text("some text here\n" * 50)
    assert (
        main(
            [
                *base,
                "--train_file",
                str(env),
                "--nb_steps",
                "0",
                "--max_steps",
                "-1",
                "--num_train_epochs",
                "0",
            ]
        )
        == 1
    )
    assert "0 training updates" in capsys.readouterr().err
    save_tiny_model(tmp_path / "gpt", "gpt2", head="clm")
    assert main([*base, "--train_file", str(env), "--model_name_or_path", str(tmp_path / "gpt")]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("invariant-lm train: error:") and "masked LM" in last
    assert main([*base, "--train_file", str(env), "--mode", "bogus"]) == 2


def test_eval_checkpoint_with_other_heads_is_one_line_error(tmp_path, capsys):
    from invariant_lm._testing import tiny

    base, tok = tiny("bert")
    InvariantMLM.from_base(base, ["x", "y"]).save_pretrained(tmp_path / "m", tokenizer=tok)
    ckpt = tmp_path / "other.ckpt"
    torch.save({"invariant": {"invariant_config": {"envs": ["x", "y", "z"]}}, "state_dict": {}}, ckpt)
    (tmp_path / "v.txt").write_text("some words here\n" * 4)
    argv = ["eval", "--model_name_or_path", str(tmp_path / "m"), "--checkpoint", str(ckpt),
            "--validation_file", str(tmp_path / "v.txt")]  # fmt: skip
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "has 3 head(s)" in last and "has 2" in last
