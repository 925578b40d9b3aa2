"""Properties 11-15 and 17 of the spec, plus CLI bad-input handling: configs, optimizer groups, schedules,
packing, Lightning training with exact resume, export round trips, end-to-end convergence."""

import json
import math
from pathlib import Path

import datasets
import pytest
import pytorch_lightning as pl
import torch
from headless_lm.cli import main
from headless_lm.config import GptConfig, MlmConfig
from headless_lm.data import PackedRows, load_packed, pack_documents
from headless_lm.modeling import add_lm_head, backbone, build_model
from headless_lm.objectives import causal_lm_loss
from headless_lm.train import HeadlessLMModule, _arch_dict, _task_dict, lr_scheduler, run_pretrain
from lmlab.testing import tiny_tokenizer_dir
from transformers import AutoModel, AutoModelForCausalLM

SHIPPED = {
    "gpt": ["gpt_headless_70m", "gpt_headless_160m", "gpt_vanilla_70m", "gpt_vanilla_160m"],
    "ft-gpt": ["gpt_vanilla_ft", "gpt_ft_paper"],
    "mlm": ["mlm_headless", "mlm_vanilla"],
    "preprocess": ["preprocess_owt2"],
}


def _yaml(out: str) -> dict:
    import yaml

    return yaml.safe_load(out)


@pytest.mark.parametrize(("cmd", "names"), list(SHIPPED.items()))
def test_reference_configs_load_unchanged(cmd, names, capsys):
    for name in names:
        assert main([cmd, "--config", name, "--print_config"]) == 0
        cfg = _yaml(capsys.readouterr().out)
        if name == "gpt_headless_70m":
            assert cfg["emb_loss_weight"] == 1.0 and cfg["lm_loss_weight"] == 0.0
            assert cfg["max_steps"] == 143000 and cfg["learning_rate"] == 1e-3
            assert cfg["warmup_steps"] == 1430 and cfg["adam_betas"] == [0.9, 0.95]
            assert cfg["weight_decay"] == 0.1 and cfg["schedule_type"] == "cosine"
            assert cfg["hf_path"] == "pythia-70m" and cfg["model_max_seq_len"] == 2048
        if name == "mlm_vanilla":
            assert cfg["emb_loss_weight"] == 0.0 and cfg["mlm_loss_weight"] == 1.0
            assert cfg["max_seq_len"] == 128 and cfg["learning_rate"] == 1e-4
            assert cfg["schedule_type"] == "triangular" and cfg["warmup_steps"] == 10000
            assert cfg["adam_betas"] == [0.9, 0.999] and cfg["weight_decay"] == 0.01
    # command line overrides the config file
    assert main(["gpt", "--config", "gpt_headless_70m", "--max_steps", "7", "--print_config"]) == 0
    assert _yaml(capsys.readouterr().out)["max_steps"] == 7


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"emb_loss_weight": 1.0, "lm_los_weight": 0.0}))
    assert main(["gpt", "--config", str(bad), "--print_config"]) == 2
    assert "lm_los_weight" in capsys.readouterr().err
    assert (
        main(["gpt", "--global_bs", "10", "--gpu_bs", "4", "--schedule_type", "nope", "--print_config"]) == 2
    )


@pytest.mark.parametrize(("kind", "arch"), [("clm", "tiny-gpt"), ("mlm", "tiny-bert")])
def test_optimizer_has_no_weight_decay_on_biases_and_norms(kind, arch):
    cfg = (GptConfig if kind == "clm" else MlmConfig)(hf_path=arch, devices=1, global_bs=None)
    module = HeadlessLMModule(kind, _arch_dict(cfg, kind, None), {**_task_dict(cfg), "mlm_loss_weight": 1.0})
    groups = module.configure_optimizers()["optimizer"].param_groups
    decay = [g for g in groups if g["weight_decay"] == cfg.weight_decay]
    skip = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(decay) == len(skip) == 1
    skip_ids = {id(p) for p in skip[0]["params"]}
    for module_name, sub in module.named_modules():
        for name, p in sub.named_parameters(recurse=False):
            if name == "bias" or "norm" in type(sub).__name__.lower():
                assert id(p) in skip_ids, f"{module_name}.{name} is decayed"
            elif p.ndim == 2:
                assert id(p) not in skip_ids, f"{module_name}.{name} is not decayed"
    n_params = len({id(p) for p in module.parameters()})
    assert len(decay[0]["params"]) + len(skip[0]["params"]) == n_params


def test_schedules():
    def factor(step, schedule, min_ratio=0.0):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        sched = lr_scheduler(opt, schedule=schedule, warmup=10, total=110, min_ratio=min_ratio)
        return sched.lr_lambdas[0](step)

    assert factor(0, "cosine") == 0.0
    assert factor(5, "cosine") == pytest.approx(0.5)
    assert factor(10, "cosine") == pytest.approx(1.0)
    assert factor(60, "cosine") == pytest.approx(0.5)
    assert factor(110, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert factor(110, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert factor(60, "cosine", min_ratio=0.1) == pytest.approx(0.55)
    assert factor(60, "triangular") == pytest.approx(0.5)
    assert factor(110, "triangular") == pytest.approx(0.0)
    assert factor(60, "triangular", min_ratio=0.2) == pytest.approx(0.6)
    assert factor(110, "triangular", min_ratio=0.2) == pytest.approx(0.2)
    assert factor(5, "constant") == pytest.approx(0.5)
    assert factor(100, "constant") == 1.0


def test_packing_rows_remainder_and_eos():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    rows = torch.tensor(
        __import__("numpy").concatenate(list(pack_documents(docs, 4, eos_id=0, batch_docs=2)))
    )
    assert rows.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]  # 12 tokens: nothing lost
    # an exact multiple inside a batch is kept (the reference sliced such a batch away)
    rows = list(pack_documents([[1, 2], [3, 4]], 2, batch_docs=1))
    assert sum(len(r) for r in rows) == 2
    # only the final remainder (< L) is lost, carried over batch boundaries
    docs = [list(range(i * 10, i * 10 + 7)) for i in range(5)]  # 35 tokens
    rows = __import__("numpy").concatenate(list(pack_documents(docs, 8, batch_docs=2)))
    assert rows.shape == (4, 8) and rows.reshape(-1).tolist() == [t for d in docs for t in d][:32]


def test_preprocess_is_seeded_and_splits(tmp_path):
    tok = tiny_tokenizer_dir("gpt2")
    text = tmp_path / "corpus.txt"
    from lmlab.testing import tiny_texts

    text.write_text("\n\n".join(tiny_texts(30)))
    outs = []
    for i in range(2):
        out = tmp_path / f"data{i}.hf"
        args = ["preprocess", "--text_files", str(text), "--hf_tokenizer", str(tok), "--output", str(out)]
        assert main([*args, "--max_seq_len", "32", "--val_fraction", "0.1", "--seed", "3"]) == 0
        outs.append(datasets.load_from_disk(str(out)))
    assert outs[0]["train"]["packed"] == outs[1]["train"]["packed"]
    assert set(outs[0]) == {"train", "validation"}
    assert all(len(r) == 32 for r in outs[0]["train"]["packed"])
    eos = __import__("transformers").AutoTokenizer.from_pretrained(tok).eos_token_id
    assert any(eos in r for r in outs[0]["train"]["packed"])


# ------------------------------------------------------------------------------------------- training runs


def _cyclic_dataset(path: Path, rows=64, length=17, period=8, vocab_offset=10, seed=0) -> Path:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, period, (rows,), generator=g)
    data = [[vocab_offset + (int(s) + t) % period for t in range(length)] for s in starts]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": data})}).save_to_disk(str(path))
    return path


def _gpt_args(data, out, steps, extra=()):
    return [
        "--dataset",
        str(data),
        "--hf_path",
        "tiny-gpt",
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--gpu_bs",
        "4",
        "--global_bs",
        "4",
        "--devices",
        "1",
        "--device",
        "cpu",
        "--warmup_steps",
        "2",
        "--logger",
        "none",
        "--progress_bar",
        "false",
        "--val_every",
        "4",
        "--val_batches",
        "1",
        "--ckpt_every",
        "4",
        "--last_every",
        "2",
        "--model_max_seq_len",
        "32",
        "--learning_rate",
        "3e-3",
        *extra,
    ]


class _Crash(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 5:
            raise RuntimeError("simulated crash")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_interrupt_and_resume_is_exact(tmp_path):
    data = _cyclic_dataset(tmp_path / "d.hf")
    from headless_lm.cli import commands
    from lmlab.cli import _field_types, build_config, parse_argv

    cmd = next(c for c in commands() if c.name == "gpt")

    def cfg_for(out):
        args = _gpt_args(data, out, 8, ["--emb_loss_weight", "1", "--lm_loss_weight", "0.5"])
        return build_config(cmd, parse_argv(args, _field_types(GptConfig), cmd.aliases))

    run_pretrain(cfg_for(tmp_path / "full"), "clm")
    with pytest.raises(RuntimeError, match="simulated"):
        run_pretrain(cfg_for(tmp_path / "cut"), "clm", callbacks=[_Crash()])
    assert _state(tmp_path / "cut" / "checkpoints" / "last.ckpt")["global_step"] == 4
    summary = run_pretrain(cfg_for(tmp_path / "cut"), "clm")
    assert summary["global_step"] == 8
    a = _state(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = _state(tmp_path / "cut" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8 and a["samples_seen"] == b["samples_seen"] == 32
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # periodic checkpoints kept forever in their own folder, apart from the rolling last.ckpt
    # (the last step's checkpoint is last.ckpt alone: each checkpoint is stored once)
    periodic = sorted(p.name for p in (tmp_path / "full" / "periodic").iterdir())
    assert periodic == ["step-4.ckpt"]
    hp = a["hyper_parameters"]
    assert hp["kind"] == "clm" and isinstance(hp["arch"], dict)


@pytest.mark.slow
def test_export_round_trips_and_wrong_kind(tmp_path, capsys):
    data = _cyclic_dataset(tmp_path / "d.hf")
    run = tmp_path / "headless"
    assert main(["gpt", *_gpt_args(data, run, 2, ["--emb_loss_weight", "1", "--lm_loss_weight", "0"])]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "export"
    assert main(["export", "--model_ckpt", str(ckpt), "--mode", "add_head", "--output_dir", str(out)]) == 0
    lm = AutoModelForCausalLM.from_pretrained(out)
    lm.eval()
    ids = torch.randint(10, 18, (2, 9))
    hidden = backbone(lm)(input_ids=ids).last_hidden_state
    emb = lm.get_input_embeddings().weight
    assert torch.allclose(lm(input_ids=ids).logits, hidden @ emb.T, atol=1e-5)
    assert json.loads((out / "headless_lm.json").read_text())["mode"] == "add_head"
    # same weights as the checkpoint's backbone
    sd = _state(ckpt)["state_dict"]
    assert torch.equal(sd["model.embed_in.weight"], emb.detach())
    # wrong kinds / modes: one line, exit 1
    assert main(["export", "--model_ckpt", str(ckpt), "--mode", "mlm", "--output_dir", str(out)]) == 1
    assert main(["export", "--model_ckpt", str(ckpt), "--mode", "lm", "--output_dir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "causal" in err[-2] and "headless" in err[-1]
    not_ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, not_ckpt)
    assert main(["export", "--model_ckpt", str(not_ckpt), "--mode", "lm", "--output_dir", str(out)]) == 1


@pytest.mark.slow
def test_mlm_train_and_export(tmp_path, capsys):
    tok_dir = tiny_tokenizer_dir("roberta")
    data = _cyclic_dataset(tmp_path / "d.hf", rows=32, length=32, vocab_offset=20)
    common = [
        "--dataset",
        str(data),
        "--hf_tokenizer",
        str(tok_dir),
        "--hf_path",
        "tiny-bert",
        "--max_steps",
        "2",
        "--gpu_bs",
        "8",
        "--global_bs",
        "8",
        "--devices",
        "1",
        "--device",
        "cpu",
        "--logger",
        "none",
        "--progress_bar",
        "false",
        "--max_seq_len",
        "16",
        "--model_max_seq_len",
        "32",
        "--warmup_steps",
        "1",
    ]
    for name, w in (("h", ("1", "0")), ("v", ("0", "1"))):
        args = [
            "mlm",
            *common,
            "--output_dir",
            str(tmp_path / name),
            "--emb_loss_weight",
            w[0],
            "--mlm_loss_weight",
            w[1],
        ]
        assert main(args) == 0
        out = tmp_path / f"export_{name}"
        ckpt = tmp_path / name / "checkpoints" / "last.ckpt"
        assert main(["export", "--model_ckpt", str(ckpt), "--mode", "mlm", "--output_dir", str(out)]) == 0
        assert (
            main(["export", "--model_ckpt", str(ckpt), "--mode", "add_head", "--output_dir", str(out)]) == 1
        )
        sd = _state(ckpt)["state_dict"]
        loaded = AutoModel.from_pretrained(out)
        key = next(k for k in sd if k.endswith("word_embeddings.weight"))
        assert torch.equal(loaded.get_input_embeddings().weight, sd[key])
        if name == "h":
            assert not any(".cls." in k or k.startswith("model.cls") for k in sd)
        else:
            assert any("cls" in k for k in sd)
    # a tokenizer without a mask token: one-line error
    gpt_tok = tiny_tokenizer_dir("gpt2")
    bad = ["mlm", *common, "--hf_tokenizer", str(gpt_tok), "--output_dir", str(tmp_path / "bad")]
    assert main(bad) == 1
    assert "mask token" in capsys.readouterr().err


def test_bad_data_errors(tmp_path, capsys):
    data = _cyclic_dataset(tmp_path / "d.hf", length=40)
    args = _gpt_args(data, tmp_path / "r", 1)
    assert main(["gpt", *args]) == 1  # rows of 40 > 32 positions
    assert "positions" in capsys.readouterr().err
    empty = tmp_path / "empty.hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": []})}).save_to_disk(str(empty))
    assert main(["gpt", *_gpt_args(empty, tmp_path / "r2", 1)]) == 1
    assert "empty" in capsys.readouterr().err
    assert main(["gpt", *_gpt_args(tmp_path / "missing.hf", tmp_path / "r3", 1)]) == 1
    assert "no such folder" in capsys.readouterr().err
    ok = _cyclic_dataset(tmp_path / "ok.hf")
    assert main(["gpt", *_gpt_args(ok, tmp_path / "r4", 1), "--global_bs", "6"]) == 2  # a usage error
    assert "multiple" in capsys.readouterr().err


def test_packed_rows_split_for_mlm(tmp_path):
    data = _cyclic_dataset(tmp_path / "d.hf", rows=3, length=32)
    train, valid = load_packed(str(data))
    assert len(train) == 2 and len(valid) == 1  # last rows held out when there is no validation split
    rows = PackedRows(train, "packed", 8)
    assert len(rows) == 8 and rows[1].tolist() == train[0]["packed"][8:16]


@pytest.mark.slow
def test_end_to_end_cyclic_data_converges():
    """Headless CLM on cyclic data reaches the duplicate floor ln(c) and its copied-E head then predicts the
    next token perfectly; vanilla CE on the same data goes to ~0."""
    torch.manual_seed(0)
    period, batch, length = 8, 4, 17
    starts = torch.arange(batch) * 3 % period
    ids = torch.stack([(s + torch.arange(length)) % period for s in starts]) + 10
    count = batch * (length - 1) // period  # each token is a target this many times
    results = {}
    for headless in (True, False):
        torch.manual_seed(0)
        model = build_model("clm", "tiny-gpt", vocab_size=64, max_position_embeddings=32, headless=headless)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(300):
            opt.zero_grad()
            out = causal_lm_loss(
                model, ids, emb_loss_weight=float(headless), lm_loss_weight=float(not headless)
            )
            out.total_loss.backward()
            opt.step()
        results[headless] = (model, out.total_loss.item())
    model, loss = results[True]
    assert loss == pytest.approx(math.log(count), abs=0.05)
    lm = add_lm_head(model)
    lm.eval()
    with torch.no_grad():
        pred = lm(input_ids=ids).logits[:, :-1].argmax(-1)
    assert torch.equal(pred, ids[:, 1:])
    assert results[False][1] < 0.05
