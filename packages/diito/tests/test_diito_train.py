"""`diito train` end to end on tiny models (spec 11: 14, 15, 16; resume; bad input)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diito.cli import main
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
    extra = ("--freeze_pos_embs", "--interchange_consecutive_only", "--save_each_epoch", "false")
    assert main(_args(assets, "run", 25, *extra)) == 0
    assert not list((assets / "run").glob("epoch_*"))  # 25 batches of 8 cross an epoch, but no export asked
    rows = [r for r in read_jsonl(assets / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(rows) == 25
    for key in ("loss_ce", "loss_mlm", "loss_cos", "loss_causal_ce", "loss_causal_cos", "lr", "tokens"):
        assert all(torch.isfinite(torch.tensor(r[f"train/{key}"])) for r in rows), key
    first = sum(r["train/loss"] for r in rows[:5]) / 5
    last = sum(r["train/loss"] for r in rows[-5:]) / 5
    assert last < first
    from transformers import AutoModelForMaskedLM, DistilBertForMaskedLM

    trained = AutoModelForMaskedLM.from_pretrained(assets / "run" / "model")
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
    # the run folder closes like every lmlab run: model/, results.json, report.md, then DONE
    results = json.loads((assets / "run" / "results.json").read_text())
    assert results["optimizer_steps"] == 25
    assert "| optimizer_steps | 25 |" in (assets / "run" / "report.md").read_text()
    assert (assets / "run" / "DONE").stat().st_mtime >= (assets / "run" / "report.md").stat().st_mtime
    assert not (assets / "run" / "student").exists()


def test_finished_run_needs_overwrite_and_force_is_its_alias(assets, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(_args(assets, out, 1, "--save_each_epoch", "false")) == 0
    capsys.readouterr()
    assert main(_args(assets, out, 1)) == 1
    assert "pass --overwrite true" in capsys.readouterr().err.strip().splitlines()[-1]
    line = _one_line_failure(capsys, 2, _args(assets, out, 1, "--force", "--overwrite", "false"))
    assert "--overwrite false and --force True set the same option (overwrite)" in line, line
    done = (tmp_path / "run" / "DONE").stat().st_mtime
    assert main(_args(assets, out, 2, "--force", "--resume", "never", "--save_each_epoch", "false")) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["optimizer_steps"] == 2
    assert (tmp_path / "run" / "DONE").stat().st_mtime > done


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


def _state(folder):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(folder).state_dict()  # stock transformers, no diito code


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def test_each_epoch_exports_a_stock_student_with_that_steps_weights(assets):
    from diito.data.binarized import load_binarized, save_binarized
    from diito.trainer import build, make_trainer
    from lmlab.seed import seed_everything

    data = load_binarized(assets / "bin.train.teacher.npz")  # a small corpus: the first 20 sequences
    data.ids, data.offsets = data.ids[: data.offsets[20]], data.offsets[:21]
    save_binarized(data, assets / "small.npz")
    extra = ("--batch_size", "16", "--data_file", str(assets / "small.npz"))
    per_epoch = -(-len(build(_config(assets, "unused", 1, *extra))[0].dataset) // 16)
    assert per_epoch >= 2

    def fit(out, max_steps, ckpt=None):
        cfg = _config(assets, out, 2 * per_epoch, *extra)
        seed_everything(cfg.seed)
        module, _ = build(cfg)
        make_trainer(cfg, cfg.output_dir, max_steps).fit(module, ckpt_path=ckpt, weights_only=True)
        return module

    # the CLI run ends exactly at the end of the second epoch
    assert main(_args(assets, "epochs", 2 * per_epoch, *extra)) == 0
    run = assets / "epochs"
    assert sorted(p.name for p in run.glob("epoch_*")) == ["epoch_0", "epoch_1"]
    assert (run / "epoch_0" / "config.json").is_file() and (run / "epoch_0" / "model.safetensors").is_file()
    epoch0, epoch1 = _state(run / "epoch_0"), _state(run / "epoch_1")
    _assert_same(epoch1, _state(run / "model"))
    assert not torch.equal(epoch0["vocab_projector.bias"], epoch1["vocab_projector.bias"])
    # epoch_0 holds the weights after the step that finished the first epoch: stop the same run there
    half = fit("epochs_half", per_epoch)
    _assert_same(epoch0, half.student.state_dict())
    _assert_same(epoch0, _state(assets / "epochs_half" / "epoch_0"))
    assert not (assets / "epochs_half" / "epoch_1").exists()
    # resuming neither rewrites epoch_0 nor skips epoch_1
    fit("epochs_half", 2 * per_epoch, str(assets / "epochs_half" / "checkpoints" / "last.ckpt"))
    _assert_same(epoch0, _state(assets / "epochs_half" / "epoch_0"))
    _assert_same(epoch1, _state(assets / "epochs_half" / "epoch_1"))


def test_validation_file_is_scored_every_val_check_interval(assets, tmp_path, capsys):
    from diito.data.binarized import load_binarized, save_binarized
    from diito.trainer import build, make_trainer
    from lmlab.seed import seed_everything

    data = load_binarized(assets / "bin.train.teacher.npz")  # 12 held-out sequences, split at max length
    data.ids, data.offsets = data.ids[: data.offsets[12]], data.offsets[:13]
    save_binarized(data, tmp_path / "valid.npz")
    extra = ("--validation_file", str(tmp_path / "valid.npz"), "--val_check_interval", "2")
    cfg = _config(assets, str(tmp_path / "run"), 4, *extra)
    seed_everything(cfg.seed)
    module, _ = build(cfg)
    assert len(module.val_dataset) > 8  # several batches of 8, the last one partial
    make_trainer(cfg, cfg.output_dir, 4).fit(module)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val/loss" in r]
    assert len(rows) == 2  # after micro-batches 2 and 4
    assert rows[0]["val/loss"] != rows[1]["val/loss"]
    # the last row is the size-weighted mean over the held-out batches with the final weights, in eval mode
    module.student.eval()
    sums, n = {}, 0
    with torch.no_grad():
        for batch in module.val_dataloader():
            size = batch["base_ids"].shape[0]
            n += size
            for k, v in module.losses(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * size
    for k in ("loss", "loss_ce", "loss_mlm", "loss_cos", "loss_causal_ce", "loss_causal_cos"):
        assert rows[-1][f"val/{k}"] == pytest.approx(sums[k] / n, rel=1e-5), k
    # without held-out data the flag says it does nothing; held-out data without the interval is a usage error
    assert main(_args(assets, str(tmp_path / "plain"), 1, "--val_check_interval", "2")) == 0
    assert "--val_check_interval 2 has no effect without --validation_file" in capsys.readouterr().err
    line = _one_line_failure(capsys, 2, _args(assets, str(tmp_path / "r"), 1, extra[0], extra[1]))
    assert "--validation_file needs --val_check_interval" in line, line


def test_epoch_ends_at_the_optimiser_step_holding_its_last_micro_batch(assets):
    from types import SimpleNamespace

    from diito.trainer import build

    module, _ = build(_config(assets, "unused", 1, "--batch_size", "16"))
    per_epoch = -(-len(module.dataset) // 16)
    for acc, world in ((1, 1), (3, 1), (2, 2)):
        done = []
        for step in range(3 * per_epoch):
            module._trainer = SimpleNamespace(global_step=step, accumulate_grad_batches=acc, world_size=world)
            done.append(module.epochs_done())
        # step g has consumed the stream's first g * acc * world micro-batches: epoch k-1 ends at the first
        # step with g * acc * world >= k * per_epoch (mid-step epoch ends wait for the step that holds them)
        for k in (1, 2):
            assert done.index(k) == math.ceil(k * per_epoch / (acc * world)), (acc, world, k)
    module._trainer = None


def test_repair_each_epoch_reaches_the_dataset(assets):
    from diito.trainer import build

    plain, _ = build(_config(assets, "unused", 1))
    repaired, _ = build(_config(assets, "unused", 1, "--repair_each_epoch"))
    assert np.array_equal(plain.dataset.pairing_for(1), plain.dataset.pairing_for(0))
    assert np.array_equal(repaired.dataset.pairing_for(0), plain.dataset.pairing_for(0))
    assert not np.array_equal(repaired.dataset.pairing_for(1), repaired.dataset.pairing_for(0))


def test_lr_schedule_and_parameter_groups(assets):
    from diito.trainer import build

    module, total = build(_config(assets, "unused", 101, "--weight_decay", "0.01"))
    configured = module.configure_optimizers()
    factor = configured["lr_scheduler"]["scheduler"].lr_lambdas[0]
    warmup = 6  # ceil(0.05 * 101): linear warm-up, then linear decay to 0 at the last step
    assert total == 101
    assert [factor(s) for s in (0, 3, warmup, total)] == [0.0, 0.5, 1.0, 0.0]
    assert factor(total - 1) == pytest.approx(1 / 95)
    decay, rest = configured["optimizer"].param_groups
    names = {id(p): n for n, p in module.student.named_parameters()}
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])  # no decay on biases and LayerNorms
    assert {names[id(p)] for p in rest["params"]} >= {"vocab_projector.bias", "vocab_layer_norm.weight"}
    frozen = {id(p) for p in module.student.parameters() if not p.requires_grad}
    assert not frozen & {id(p) for g in (decay, rest) for p in g["params"]}


def test_compiled_training_step_equals_eager(assets):
    """--compile (torch.compile in place, aot_eager in tests) of teacher and student: two DIITO steps with every
    loss term, the causal one through the intervention hooks, give the eager losses and weights."""
    from diito.trainer import build
    from lmlab.seed import seed_everything
    from torch._dynamo.utils import counters
    from torch.utils.data import DataLoader

    def steps(*extra):
        cfg = _config(assets, "unused", 2, *extra)
        seed_everything(cfg.seed)
        module, _ = build(cfg)
        keys = list(module.student.state_dict())
        opt = module.configure_optimizers()["optimizer"]
        batches = [[(b, 0, i) for i in range(8 * b, 8 * b + 8)] for b in range(2)]
        losses = []
        for batch in DataLoader(module.dataset, batch_sampler=batches, collate_fn=module.collator):
            out = module.losses(batch)
            out["loss"].backward()
            opt.step()
            opt.zero_grad()
            losses.append({k: v.detach() for k, v in out.items()})
        return module, keys, losses

    eager, eager_keys, eager_losses = steps()
    graphs = counters["stats"]["unique_graphs"]
    compiled, compiled_keys, compiled_losses = steps("--compile")
    assert counters["stats"]["unique_graphs"] > graphs  # the models really ran compiled
    assert compiled_keys == eager_keys  # checkpoints and exports keep their keys
    assert set(compiled_losses[0]) >= {"loss_ce", "loss_mlm", "loss_cos", "loss_causal_ce", "loss_causal_cos"}
    for a, b in zip(eager_losses, compiled_losses, strict=True):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.student.named_parameters(), compiled.student.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_student_trains_teacher_stays_frozen_and_common_flags_reach_both(assets, tmp_path, monkeypatch):
    from diito.trainer import DiitoModule

    seen = {}
    original = DiitoModule.training_step

    def spy(self, batch, batch_idx):
        if not seen:
            seen["student"] = {n for n, m in self.student.named_modules() if not m.training}
            seen["teacher"] = {n for n, m in self.teacher.named_modules() if m.training}
            seen["attn"] = {
                self.teacher.config._attn_implementation,
                self.student.config._attn_implementation,
            }
            seen["accumulate"] = self.trainer.accumulate_grad_batches
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DiitoModule, "training_step", spy)
    args = _args(
        assets, str(tmp_path / "run"), 1, "--attn_implementation", "eager", "--save_each_epoch", "false"
    )
    args[args.index("--gradient_accumulation_steps") + 1] = "2"
    assert main(args) == 0
    # from_pretrained returns eval mode: lmlab's TrainMode turns the student's dropout on, the teacher (declared
    # in eval_modules, held outside the module tree) stays in eval mode
    assert seen["student"] == set() and seen["teacher"] == set()
    assert seen["attn"] == {"eager"} and seen["accumulate"] == 2


def test_a_teacher_without_the_mlm_head_is_refused_in_one_line(assets, tmp_path, capsys):
    save_tiny_model(tmp_path / "bare", "bert", "base", layers=4, hidden=32, heads=2)  # a BertModel folder
    args = _args(assets, str(tmp_path / "run"), 1, "--save_each_epoch", "false")
    args[args.index("--teacher_name") + 1] = str(tmp_path / "bare")
    line = _one_line_failure(capsys, 1, args)
    assert "teacher" in line and "is BertModel, without the masked-LM head" in line, line
    assert "cls.predictions" in line and "--allow_random_head true" in line, line
    assert not (tmp_path / "run").exists()
    extract = ["extract", "--teacher_name", str(tmp_path / "bare"), "--dump_checkpoint", str(tmp_path / "s")]
    line = _one_line_failure(capsys, 1, extract)
    assert "is BertModel, without the masked-LM head" in line and not (tmp_path / "s").exists(), line
    assert main([*args, "--allow_random_head", "true"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "RANDOM" in err and "LOAD REPORT" not in err
    assert "teacher: checkpoint weights not used: pooler" in err


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

    assert isinstance(AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "model"), RobertaForMaskedLM)


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
    student = DistilBertForMaskedLM.from_pretrained(tmp_path / "run" / "model")
    assert student.config.n_layers == 1
    fresh = DistilBertForMaskedLM(student.config)  # sinusoidal table, deterministic
    assert torch.equal(
        student.distilbert.embeddings.position_embeddings.weight,
        fresh.distilbert.embeddings.position_embeddings.weight,
    )


@pytest.fixture(scope="module")
def dropout_student(assets):
    """The extracted student with dropout on (the fixture's own has it off for the loss-comparison tests)."""
    import shutil

    folder = assets / "student_dropout"
    if not folder.exists():
        shutil.copytree(assets / "student", folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(dropout=0.1, attention_dropout=0.1)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _kill_at_step(monkeypatch, step):
    """Make training die (as a SIGKILL would: no checkpoint on the way out) when optimiser step `step` starts."""
    from diito.trainer import DiitoModule

    original = DiitoModule.training_step

    def dying(self, batch, batch_idx):
        if self.trainer.global_step == step - 1:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DiitoModule, "training_step", dying)


def test_killed_run_resumes_bit_exactly_with_dropout(
    assets, dropout_student, tmp_path, monkeypatch, same_training_state
):
    def args(out):
        a = _args(assets, str(tmp_path / out), 6, "--checkpoint_every_n_steps", "2")
        a[a.index("--student_pretrained_weights") + 1] = str(dropout_student)
        a[a.index("--gradient_accumulation_steps") + 1] = "2"
        return a

    assert main(args("straight")) == 0
    with monkeypatch.context() as m:
        _kill_at_step(m, 6)  # steps 1-5 done, last.ckpt at step 4, step 4's metrics row already written
        assert main(args("killed")) == 1
    killed = tmp_path / "killed"
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert not (killed / "model").exists() and not (killed / "DONE").exists()
    assert main(args("killed")) == 0  # the same command again resumes
    same_training_state(
        tmp_path / "straight" / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt"
    )
    _assert_equal_states(_state(tmp_path / "straight" / "model"), _state(killed / "model"))
    steps = [r["step"] for r in read_jsonl(killed / "metrics.jsonl") if "train/loss" in r]
    assert steps == list(range(6))
    straight = [
        r["train/loss"] for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if "train/loss" in r
    ]
    assert straight == [r["train/loss"] for r in read_jsonl(killed / "metrics.jsonl") if "train/loss" in r]


def _assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(assets, tmp_path, capsys):
    run = tmp_path / "nan"
    args = _args(assets, str(run), 6, "--checkpoint_every_n_steps", "1", "--warmup_prop", "0")
    args[args.index("--learning_rate") + 1] = "1e30"
    assert main(args) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("diito train: error: step "), last
    assert "step 2: loss term 'loss_" in last, last
    assert (
        not (run / "DONE").exists() and not (run / "model").exists() and not (run / "results.json").exists()
    )
    assert not list(run.glob("epoch_*"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1  # the last good step, the resume point
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def _one_line_failure(capsys, code, argv):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "flag,value",
    [("--learning_rate", "-1"), ("--mlm_mask_prop", "1.5"), ("--warmup_prop", "5"), ("--batch_size", "0"),
     ("--temperature", "0"), ("--alpha_ce", "-0.5"), ("--checkpoint_every_n_steps", "0")],
)  # fmt: skip
def test_out_of_range_values_are_usage_errors_before_anything_is_written(
    assets, tmp_path, capsys, flag, value
):
    args = _args(assets, str(tmp_path / "run"), 2)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    line = _one_line_failure(capsys, 2, args)
    assert line.startswith(f"diito train: error: {flag} must be "), line
    assert not (tmp_path / "run").exists()


def test_bad_files_fail_before_the_run_folder_is_written(assets, tmp_path, capsys, malicious_pickle):
    run = tmp_path / "run"
    (tmp_path / "latin1.yaml").write_bytes("learning_rate: 1e-3 # caf\xe9\n".encode("latin-1"))
    line = _one_line_failure(
        capsys, 2, [*_args(assets, str(run), 2), "--config", str(tmp_path / "latin1.yaml")]
    )
    assert "UTF-8" in line and not run.exists()
    args = _args(assets, str(run), 2)
    args[args.index("--data_file") + 1] = str(tmp_path / "missing.npz")
    assert "does not exist" in _one_line_failure(capsys, 1, args) and not run.exists()
    # a crafted resume checkpoint, given as a path or found as last.ckpt, is refused and never unpickled
    marker = malicious_pickle(tmp_path / "evil.ckpt")
    line = _one_line_failure(
        capsys, 1, [*_args(assets, str(run), 2), "--resume", str(tmp_path / "evil.ckpt")]
    )
    assert "cannot resume from" in line and not marker.exists() and not run.exists()
    (run / "checkpoints").mkdir(parents=True)
    marker = malicious_pickle(
        run / "checkpoints" / "last.ckpt", wrap=lambda p: {"state_dict": {}, "loops": p}
    )
    assert "cannot resume from" in _one_line_failure(capsys, 1, _args(assets, str(run), 2))
    assert (
        not marker.exists() and not (run / "config.yaml").exists() and not (run / "parameters.json").exists()
    )
