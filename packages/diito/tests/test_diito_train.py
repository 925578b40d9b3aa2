"""`diito train` end to end on tiny models (spec 11: 14, 15, 16; resume; bad input)."""

import json
from pathlib import Path

import pytest
import torch
from diito.cli import main
from diito.trainer import linear_schedule
from lmlab.logging import read_jsonl
from lmlab.testing import save_tiny_model, write_text_corpus

MAP = {
    "interchange_variable_mappings": [
        {
            "teacher_variable_names": ["$L:[1:3]$H:[0:2]$[0:16]"],
            "student_variable_names": ["$L:0$H:[0:2]$[0:16]"],
        }
    ]
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("diito_train")
    save_tiny_model(
        d / "teacher",
        "bert",
        "mlm",
        layers=4,
        hidden=32,
        heads=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    corpus = write_text_corpus(d, n=120)
    assert (
        main(
            [
                "binarize",
                "--input",
                str(corpus),
                "--tokenizer_name",
                str(d / "teacher"),
                "--dump_file",
                str(d / "bin"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "token-counts",
                "--data_file",
                str(d / "bin.train.teacher.npz"),
                "--token_counts_dump",
                str(d / "counts.npy"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "extract",
                "--teacher_name",
                str(d / "teacher"),
                "--dump_checkpoint",
                str(d / "student"),
                "--layers",
                "0",
                "2",
            ]
        )
        == 0
    )
    cfg = json.loads((d / "student" / "config.json").read_text())
    cfg.update(dropout=0.0, attention_dropout=0.0)
    (d / "student" / "config.json").write_text(json.dumps(cfg))
    (d / "map.nm").write_text(json.dumps(MAP))
    return d


def _args(d: Path, out: str, steps: int = 12, *extra: str) -> list[str]:
    return [
        "train",
        "--teacher_name", str(d / "teacher"),
        "--student_pretrained_weights", str(d / "student"),
        "--data_file", str(d / "bin.train.teacher.npz"),
        "--token_counts", str(d / "counts.npy"),
        "--neuron_mapping", str(d / "map.nm"),
        "--mlm", "--alpha_ce", "0.25", "--alpha_mlm", "0.25", "--alpha_cos", "0.25", "--alpha_clm", "0",
        "--alpha_causal_ce", "0.25", "--alpha_causal_cos", "0.1",
        "--batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "2e-3",
        "--max_steps", str(steps), "--log_every_n_steps", "1", "--progress_bar", "false", "--logger", "none",
        "--device", "cpu", "--output_dir", str(d / out),
        *extra,
    ]  # fmt: skip


def test_train_logs_every_term_loss_falls_and_exports_stock_model(assets):
    assert main(_args(assets, "run", 25, "--freeze_pos_embs", "--interchange_consecutive_only")) == 0
    rows = [r for r in read_jsonl(assets / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 25
    for key in ("loss_ce", "loss_mlm", "loss_cos", "loss_causal_ce", "loss_causal_cos", "lr", "tokens"):
        assert all(torch.isfinite(torch.tensor(r[f"train/{key}"])) for r in rows), key
    first = sum(r["train/loss"] for r in rows[:5]) / 5
    last = sum(r["train/loss"] for r in rows[-5:]) / 5
    assert last < first
    from transformers import AutoModelForMaskedLM, DistilBertForMaskedLM

    trained = AutoModelForMaskedLM.from_pretrained(assets / "run" / "student")
    init = DistilBertForMaskedLM.from_pretrained(assets / "student")
    assert isinstance(trained, DistilBertForMaskedLM)
    assert torch.equal(
        trained.distilbert.embeddings.position_embeddings.weight,
        init.distilbert.embeddings.position_embeddings.weight,
    )
    assert not torch.equal(
        trained.distilbert.transformer.layer[0].ffn.lin1.weight,
        init.distilbert.transformer.layer[0].ffn.lin1.weight,
    )
    params = json.loads((assets / "run" / "parameters.json").read_text())
    assert params["total_optimizer_steps"] == 25
    # a finished run is refused without --force
    assert main(_args(assets, "run", 25)) == 1


def _config(assets, out, steps, *extra):
    import dataclasses
    import typing

    from diito.cli import COMMANDS
    from lmlab.cli import build_config, parse_argv

    cmd = next(c for c in COMMANDS if c.name == "train")
    fields = typing.get_type_hints(cmd.config_cls)
    cfg = build_config(cmd, parse_argv(_args(assets, out, steps, *extra)[1:], fields, cmd.aliases))
    return dataclasses.replace(cfg, checkpoint_every_n_steps=2)


def test_same_seed_same_losses_and_resume_is_exact(assets):
    from diito.trainer import build, make_trainer
    from lmlab.seed import seed_everything

    def fit(out, max_steps, ckpt=None):
        cfg = _config(assets, out, 8)
        seed_everything(cfg.seed)
        module, total = build(cfg)
        assert total == 8
        make_trainer(cfg, cfg.output_dir, max_steps).fit(module, ckpt_path=ckpt, weights_only=True)
        return module

    straight = fit("straight", 8)
    fit("part", 5)
    ckpt = assets / "part" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    resumed = fit("part", 8, str(ckpt))
    assert resumed.batches_seen == 8
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    fit("again", 3)
    first = [r["train/loss"] for r in read_jsonl(assets / "straight" / "metrics.jsonl") if "train/loss" in r][
        :3
    ]
    second = [r["train/loss"] for r in read_jsonl(assets / "again" / "metrics.jsonl") if "train/loss" in r][
        :3
    ]
    assert first == second


def test_lr_schedule_values():
    total, warmup = 101, 6  # ceil(0.05 * 101)
    assert linear_schedule(0, warmup, total) == 0.0
    assert linear_schedule(3, warmup, total) == 0.5
    assert linear_schedule(warmup, warmup, total) == 1.0
    assert linear_schedule(total, warmup, total) == 0.0
    assert linear_schedule(total - 1, warmup, total) == pytest.approx(1 / 95)


def test_bad_inputs_are_one_line_errors(assets, tmp_path, capsys):
    bad_map = tmp_path / "bad.nm"
    bad_map.write_text(
        json.dumps(
            {
                "interchange_variable_mappings": [
                    {
                        "teacher_variable_names": ["$L:7$H:[0:2]$[0:16]"],
                        "student_variable_names": ["$L:0$H:[0:2]$[0:16]"],
                    }
                ]
            }
        )
    )
    args = _args(assets, str(tmp_path / "r1"), 2)
    args[args.index("--neuron_mapping") + 1] = str(bad_map)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "teacher layer 7" in err[-1] and "4 layers" in err[-1]
    save_tiny_model(tmp_path / "other", "distilbert", "mlm", tokenizer=None, vocab_size=77)
    args = _args(assets, str(tmp_path / "r2"), 2)
    args[args.index("--student_pretrained_weights") + 1] = str(tmp_path / "other")
    assert main(args) == 1
    assert "vocabulary" in capsys.readouterr().err
    assert main(_args(assets, str(tmp_path / "r3"), 2, "--alpha_mlm", "0")) == 2


def test_gpt2_clm_path_with_causal_loss(tmp_path):
    save_tiny_model(tmp_path / "t", "gpt2", "clm", layers=3, hidden=32, heads=2)
    corpus = write_text_corpus(tmp_path, n=40)
    assert (
        main(
            [
                "binarize",
                "--input",
                str(corpus),
                "--tokenizer_name",
                str(tmp_path / "t"),
                "--dump_file",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "extract",
                "--teacher_name",
                str(tmp_path / "t"),
                "--dump_checkpoint",
                str(tmp_path / "s"),
                "--layers",
                "0",
                "2",
                "--student_type",
                "same",
            ]
        )
        == 0
    )
    (tmp_path / "m.nm").write_text(
        json.dumps(
            {
                "interchange_variable_mappings": [
                    {
                        "teacher_variable_names": ["$L:1$H:[0:2]$[0:16]"],
                        "student_variable_names": ["$L:0$H:[0:2]$[0:16]"],
                    }
                ]
            }
        )
    )
    args = [
        "train", "--teacher_name", str(tmp_path / "t"), "--student_pretrained_weights", str(tmp_path / "s"),
        "--data_file", str(tmp_path / "b.train.t.npz"), "--neuron_mapping", str(tmp_path / "m.nm"),
        "--alpha_ce", "0.5", "--alpha_clm", "0.5", "--alpha_causal_ce", "0.5", "--batch_size", "4",
        "--gradient_accumulation_steps", "2", "--max_steps", "3", "--progress_bar", "false", "--logger", "none",
        "--device", "cpu", "--output_dir", str(tmp_path / "run"), "--log_every_n_steps", "1",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "train/loss_clm" in r]
    assert rows and all(r["train/loss_causal_ce"] >= 0 for r in rows)


def test_roberta_student_with_causal_loss(tmp_path):
    save_tiny_model(tmp_path / "t", "roberta", "mlm", layers=3, hidden=32, heads=2)
    corpus = write_text_corpus(tmp_path, n=40)
    assert (
        main(
            [
                "binarize",
                "--input",
                str(corpus),
                "--tokenizer_name",
                str(tmp_path / "t"),
                "--dump_file",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "token-counts",
                "--data_file",
                str(tmp_path / "b.train.t.npz"),
                "--token_counts_dump",
                str(tmp_path / "c.npy"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "extract",
                "--teacher_name",
                str(tmp_path / "t"),
                "--dump_checkpoint",
                str(tmp_path / "s"),
                "--layers",
                "0",
                "2",
                "--student_type",
                "same",
            ]
        )
        == 0
    )
    (tmp_path / "m.nm").write_text(json.dumps(MAP))
    args = [
        "train", "--teacher_name", str(tmp_path / "t"), "--student_pretrained_weights", str(tmp_path / "s"),
        "--data_file", str(tmp_path / "b.train.t.npz"), "--token_counts", str(tmp_path / "c.npy"), "--neuron_mapping", str(tmp_path / "m.nm"),
        "--mlm", "--alpha_ce", "0.5", "--alpha_mlm", "0.5", "--alpha_clm", "0", "--alpha_causal_ce", "0.5",
        "--freeze_pos_embs", "--freeze_token_type_embds", "--batch_size", "4", "--max_steps", "2", "--gradient_accumulation_steps", "1",
        "--progress_bar", "false", "--logger", "none", "--device", "cpu", "--output_dir", str(tmp_path / "run"), "--log_every_n_steps", "1",
    ]  # fmt: skip
    assert main(args) == 0
    from transformers import AutoModelForMaskedLM, RobertaForMaskedLM

    assert isinstance(AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "student"), RobertaForMaskedLM)


def test_student_from_reference_style_config(assets, tmp_path):
    from transformers import AutoConfig, DistilBertForMaskedLM

    vocab = AutoConfig.from_pretrained(assets / "teacher").vocab_size
    conf = {
        "activation": "gelu",
        "dim": 32,
        "n_layers": 1,
        "n_heads": 2,
        "hidden_dim": 64,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "sinusoidal_pos_embds": True,
        "tie_weights_": True,
    }
    (tmp_path / "student.json").write_text(json.dumps(conf))
    args = _args(assets, str(tmp_path / "run"), 2, "--freeze_pos_embs")
    i = args.index("--student_pretrained_weights")
    args[i : i + 2] = ["--student_config", str(tmp_path / "student.json")]
    args[args.index("--neuron_mapping") + 1] = str(tmp_path / "m.nm")
    (tmp_path / "m.nm").write_text(
        json.dumps(
            {
                "interchange_variable_mappings": [
                    {
                        "teacher_variable_names": ["$L:2$H:[0:2]$[0:16]"],
                        "student_variable_names": ["$L:0$H:[0:2]$[0:16]"],
                    }
                ]
            }
        )
    )
    assert main(args) == 0
    student = DistilBertForMaskedLM.from_pretrained(tmp_path / "run" / "student")
    assert student.config.n_layers == 1
    fresh = DistilBertForMaskedLM(student.config)  # sinusoidal table, deterministic
    assert torch.equal(
        student.distilbert.embeddings.position_embeddings.weight,
        fresh.distilbert.embeddings.position_embeddings.weight,
    )
