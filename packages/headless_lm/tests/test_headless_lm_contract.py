"""Issue 14 in headless_lm: the common flags (one batch rule, one validation interval, the attention), the run
folder closed by lmlab (model/ = the export), and the real paths: pre-training from pretrained weights, a BERT
tokenizer in preprocess, one-document-per-line files, GLUE with one task and a base seed."""

import json
from pathlib import Path

import datasets
import pytest
import pytorch_lightning as pl
import torch
import yaml
from headless_lm.cli import main
from lmlab.testing import save_tiny_model, tiny_texts, tiny_tokenizer_dir


def _cyclic(path: Path, rows=32, length=17) -> Path:
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 8, (rows,), generator=g)
    data = [[10 + (int(s) + t) % 8 for t in range(length)] for s in starts]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": data})}).save_to_disk(str(path))
    return path


def _gpt(data: Path, out: Path, *extra: str) -> list[str]:
    return ["gpt", "--dataset", str(data), "--hf_path", "tiny-gpt", "--output_dir", str(out), "--max_steps", "2",
            "--gpu_bs", "4", "--global_bs", "4", "--devices", "1", "--device", "cpu", "--warmup_steps", "1",
            "--logger", "none", "--progress_bar", "false", "--val_batches", "1", "--model_max_seq_len", "32",
            *extra]  # fmt: skip


def _resolved(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_one_batch_rule_global_bs_and_accumulation(tmp_path, capsys):
    base = ["gpt", "--gpu_bs", "4", "--devices", "1", "--device", "cpu"]
    cfg = _resolved(capsys, [*base, "--global_bs", "16", "--accumulate_grad_batches", "4"])
    assert cfg["accumulate_grad_batches"] == 4 and cfg["global_bs"] == 16
    assert main([*base, "--global_bs", "16", "--accumulate_grad_batches", "2", "--print_config"]) == 2
    line = _error(capsys)
    assert "--accumulate_grad_batches 2 disagrees with --global_bs 16" in line and "4 x 1 devices" in line
    # without a global batch the accumulation is the flag alone
    cfg = _resolved(capsys, [*base, "--global_bs", "none", "--accumulate_grad_batches", "3"])
    assert cfg["global_bs"] is None and cfg["accumulate_grad_batches"] == 3


def test_val_every_and_val_check_interval_are_one_setting(capsys):
    assert main(["ft-gpt", "--val_every", "5", "--val_check_interval", "2", "--print_config"]) == 2
    assert "set the same thing; give one" in _error(capsys)
    assert _resolved(capsys, ["ft-gpt", "--val_check_interval", "2"])["val_check_interval"] == 2


def test_attention_flag_and_reference_alias_reach_the_model(capsys):
    from headless_lm.config import GptConfig
    from headless_lm.train import HeadlessLMModule, _arch_dict, _task_dict

    assert _resolved(capsys, ["gpt", "--accelerator", "hf"])["attn_implementation"] == "eager"
    for attn in ("eager", "sdpa"):
        cfg = GptConfig(hf_path="tiny-gpt", devices=1, global_bs=None, attn_implementation=attn)
        module = HeadlessLMModule(
            "clm", _arch_dict(cfg, "clm", None), {**_task_dict(cfg), "mlm_loss_weight": 0}
        )
        assert module.model.config._attn_implementation == attn


def test_run_folder_model_is_the_export_and_a_finished_run_is_kept(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    data = _cyclic(tmp_path / "d.hf")
    out = tmp_path / "run"
    assert main(_gpt(data, out, "--emb_loss_weight", "1", "--lm_loss_weight", "0")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 2 and (out / "DONE").is_file() and not (out / "summary.json").exists()
    assert "headless (CWT)" in (out / "report.md").read_text()
    assert json.loads((out / "model" / "headless_lm.json").read_text())["mode"] == "add_head"
    exported = tmp_path / "exported"
    assert main(["export", "--model_ckpt", str(out / "checkpoints" / "last.ckpt"), "--mode", "add_head",
                 "--output_dir", str(exported)]) == 0  # fmt: skip
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    a = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    b = AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    capsys.readouterr()
    assert main(_gpt(data, out, "--emb_loss_weight", "1", "--lm_loss_weight", "0")) == 1
    assert "holds a finished run; pass --overwrite true" in _error(capsys)
    assert main([*_gpt(data, out, "--emb_loss_weight", "1", "--lm_loss_weight", "0"), "--overwrite"]) == 0


class _FirstWeights(pl.Callback):
    def on_train_start(self, trainer, module):
        self.state = {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("headless", [False, True])
def test_pretraining_starts_from_pretrained_weights(tmp_path, headless):
    from headless_lm.cli import commands
    from headless_lm.train import run_pretrain
    from lmlab.cli import ParsedArgs, build_config
    from transformers import AutoModelForCausalLM

    folder = save_tiny_model(tmp_path / "pretrained", "gpt_neox", "clm", seed=3)
    weights = ("1", "0") if headless else ("0", "1")
    argv = _gpt(_cyclic(tmp_path / "d.hf"), tmp_path / "run", "--init_from", str(folder),
                "--emb_loss_weight", weights[0], "--lm_loss_weight", weights[1])[1:]  # fmt: skip
    command = next(c for c in commands() if c.name == "gpt")
    overrides = {argv[i][2:]: argv[i + 1] for i in range(0, len(argv), 2)}
    cfg = build_config(command, ParsedArgs(overrides=overrides))
    first = _FirstWeights()
    run_pretrain(cfg, "clm", callbacks=[first])
    pretrained = AutoModelForCausalLM.from_pretrained(folder)
    expected = (pretrained.base_model if headless else pretrained).state_dict()
    assert set(first.state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(first.state[key], value), key


def test_init_from_a_folder_without_the_lm_head_says_so_in_one_line(tmp_path, capsys):
    folder = save_tiny_model(tmp_path / "base", "gpt_neox", "base")
    data = _cyclic(tmp_path / "d.hf")
    argv = _gpt(
        data, tmp_path / "run", "--init_from", str(folder), "--emb_loss_weight", "0", "--lm_loss_weight", "1"
    )
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "has no LM head" in err and "the head starts from fresh weights" in err
    assert "LOAD REPORT" not in err and sum("LM head" in line for line in err.splitlines()) == 1


def test_preprocess_with_a_bert_tokenizer_ends_documents_with_sep(tmp_path, capsys):
    from transformers import AutoTokenizer

    tok = tiny_tokenizer_dir("wordpiece")
    tokenizer = AutoTokenizer.from_pretrained(tok)
    assert tokenizer.eos_token_id is None and tokenizer.sep_token_id is not None
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(tiny_texts(20)))
    out = tmp_path / "data.hf"
    args = ["preprocess", "--text_files", str(text), "--hf_tokenizer", str(tok), "--output", str(out)]
    assert main([*args, "--max_seq_len", "16"]) == 0
    assert "documents end with its SEP token '[SEP]'" in capsys.readouterr().err
    rows = datasets.load_from_disk(str(out))["train"]["packed"]
    assert sum(r.count(tokenizer.sep_token_id) for r in rows) >= 10


def test_one_document_per_line_files(tmp_path, capsys):
    tok = tiny_tokenizer_dir("gpt2")
    text = tmp_path / "lines.txt"
    text.write_text("\n".join(tiny_texts(12)) + "\n")
    args = ["preprocess", "--text_files", str(text), "--hf_tokenizer", str(tok), "--max_seq_len", "8"]
    assert main([*args, "--output", str(tmp_path / "a.hf")]) == 0
    captured = capsys.readouterr()
    assert "has no blank line, so its 12 lines are one document; pass --documents line" in captured.err
    assert "'documents': 1" in captured.out
    assert main([*args, "--output", str(tmp_path / "b.hf"), "--documents", "line"]) == 0
    captured = capsys.readouterr()
    assert "no blank line" not in captured.err and "'documents': 12" in captured.out


def _glue_folder(tmp_path: Path) -> Path:
    from lmlab.data import sample_path

    for task in ("MRPC", "RTE"):  # RTE: the MRPC sample's pairs with textual entailment labels
        (tmp_path / "glue" / task).mkdir(parents=True)
        for split in ("train", "dev"):
            text = sample_path(f"glue/mrpc/{split}.tsv").read_text()
            if task == "RTE":
                rows = [line.split("\t") for line in text.splitlines()]
                body = [
                    f"{i}\t{r[3]}\t{r[4]}\t{'entailment' if r[0] == '1' else 'not_entailment'}"
                    for i, r in enumerate(rows[1:])
                ]
                text = "\n".join(["index\tsentence1\tsentence2\tlabel", *body]) + "\n"
            (tmp_path / "glue" / task / f"{split}.tsv").write_text(text)
    return tmp_path / "glue"


def test_glue_one_task_report_per_task_results_and_base_seed(tmp_path, capsys):
    from transformers import AutoModel

    model = save_tiny_model(tmp_path / "bert", "bert", "base")
    out = tmp_path / "run"
    args = ["glue", "--model", str(model), "--tasks", "rte", "--seeds", "0", "1", "--seed", "5", "--epochs", "1",
            "--batch_size", "4", "--max_train_samples", "8", "--data_dir", str(_glue_folder(tmp_path)),
            "--output_dir", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "rte: " in captured.out and "None" not in captured.out
    assert "it/s" in captured.out + captured.err  # the progress bar
    report = (out / "report.md").read_text()
    assert "- rte: " in report and "None" not in report  # RTE alone: no average (it is left out of averages)
    results = json.loads((out / "results.json").read_text())
    assert "average" not in results and results["protocol"]["seeds"] == [5, 6]
    per_task = json.loads((out / "rte" / "results.json").read_text())
    assert per_task["best_per_seed"] == results["tasks"]["rte"]["best_per_seed"]
    # one folder per seed (--seed + seeds[k]); only the latest run's checkpoint is kept, linked from the top
    assert (out / "rte" / "seed5" / "history.json").is_file() and (
        out / "rte" / "seed6" / "history.json"
    ).is_file()
    assert not (out / "rte" / "seed5" / "checkpoints").exists()
    assert (out / "checkpoints" / "last.ckpt").resolve() == (
        out / "rte" / "seed6" / "checkpoints" / "last.ckpt"
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(set(r) - {"step"}) for r in rows] == [["rte/seed5/dev"], ["rte/seed6/dev"]]
    assert AutoModel.from_pretrained(out / "model") is not None
    assert json.loads((out / "model" / "glue_head.json").read_text())["seed"] == 6
    assert (out / "DONE").is_file()


def test_glue_says_in_one_line_that_an_lm_head_is_not_used(tmp_path, capsys):
    from headless_lm.eval.glue import _load_backbone

    folder = save_tiny_model(tmp_path / "mlm", "bert", "mlm")
    assert type(_load_backbone(str(folder), "sdpa")).__name__ == "BertModel"
    err = capsys.readouterr().err
    assert "weights of its LM head are not used (cls.predictions" in err
    assert "LOAD REPORT" not in err and "pooler" not in err
