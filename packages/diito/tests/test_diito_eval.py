"""Downstream evaluation commands on tiny models and lmlab's shipped samples; CLI surface."""

import json

import pytest
import torch
from diito.cli import COMMANDS, main
from lmlab.data import sample_path
from lmlab.logging import read_jsonl
from lmlab.testing import save_tiny_model


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("diito_eval")
    return save_tiny_model(d / "student", "distilbert", "mlm", layers=1, hidden=32, heads=2)


def test_every_subcommand_has_help(capsys):
    for cmd in COMMANDS:
        assert main([cmd.name, "--help"]) == 0
    assert "--interchange_prop" in capsys.readouterr().out
    assert main(["train", "--config", "diito", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "alpha_causal_ce: 0.25" in out and "accumulate_grad_batches: 6" in out


def test_eval_mlm_perplexity_matches_manual(student, tmp_path):
    from diito.eval.mlm import mask_tokens, mlm_perplexity
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    text = sample_path("wikitext/sample_text.txt")
    assert (
        main(
            [
                "eval-mlm",
                "--model_name_or_path",
                str(student),
                "--validation_file",
                str(text),
                "--max_seq_length",
                "32",
                "--output_dir",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["perplexity"] == pytest.approx(torch.tensor(res["eval_loss"]).exp().item(), rel=1e-6)
    argv = ["eval-mlm", "--model_name_or_path", str(student), "--validation_file", str(text), "--max_seq_length",
            "32", "--output_dir", str(tmp_path), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 1  # a finished evaluation is refused without --overwrite ...
    (tmp_path / "report.md").write_text("stale")
    assert main([*argv, "--overwrite", "true"]) == 0  # ... and recomputed with it, the same seeded masks
    assert json.loads((tmp_path / "results.json").read_text()) == res
    assert (tmp_path / "report.md").read_text() != "stale"
    tok = AutoTokenizer.from_pretrained(student)
    ids = torch.tensor([[tok.cls_token_id] + [10] * 30 + [tok.sep_token_id]] * 50)
    x, labels = mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()
    assert 0.1 < (labels >= 0).float().mean() < 0.2
    model = AutoModelForMaskedLM.from_pretrained(student)
    a = mlm_perplexity(model, tok, [text.read_text()], 32, 4, 0.15, seed=3)
    b = mlm_perplexity(model, tok, [text.read_text()], 32, 4, 0.15, seed=3)
    assert a == b and a["masked_tokens"] > 0


def test_eval_glue_mrpc_and_stsb(student, tmp_path, capsys):
    for task, folder, key in (("mrpc", "mrpc", "f1"), ("stsb", "sts-b", "pearson")):
        args = ["eval-glue", "--model_name_or_path", str(student), "--task_name", task, "--train_file", str(sample_path(f"glue/{folder}/train.tsv")),
                "--validation_file", str(sample_path(f"glue/{folder}/dev.tsv")), "--output_dir", str(tmp_path / task), "--device", "cpu",
                "--num_train_epochs", "1", "--max_seq_length", "64"]  # fmt: skip
        assert main(args) == 0
        res = json.loads((tmp_path / task / "results.json").read_text())
        assert key in res and "score" in res and res["n_eval"] > 0
        # the one run-folder layout: results.json, a report naming the task and its scores, DONE last
        report = (tmp_path / task / "report.md").read_text()
        assert report.startswith(f"# diito eval-glue: {task}\n") and f"| task | {task} |" in report
        assert f"| {key} | " in report and "None" not in report
        assert (tmp_path / task / "DONE").stat().st_mtime >= (tmp_path / task / "report.md").stat().st_mtime
        out, err = capsys.readouterr()
        # the new head is said in one line instead of transformers' LOAD REPORT table; a progress bar shows
        assert "LOAD REPORT" not in err and "new (random) classifier (2 weights), pre_classifier" in err
        assert "not used from the checkpoint: vocab_layer_norm" in err and "Epoch 0" in out + err


def test_eval_glue_reads_a_raw_glue_folder_with_string_labels(student, tmp_path):
    rte = tmp_path / "glue_data" / "RTE"  # as the GLUE distribution ships it: dev.tsv, labels as words
    rte.mkdir(parents=True)
    rows = [
        ("A man sleeps.", "A person sleeps.", "entailment"),
        ("A cat runs.", "A dog sits.", "not_entailment"),
    ]
    for split, n in (("train", 4), ("dev", 2)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        lines += [f"{i}\t{a}\t{b}\t{y}" for i, (a, b, y) in enumerate(rows * n)]
        (rte / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["eval-glue", "--model_name_or_path", str(student), "--task_name", "rte", "--train_file", str(rte.parent),
            "--validation_file", str(rte), "--output_dir", str(out), "--device", "cpu", "--num_train_epochs", "1",
            "--max_seq_length", "32", "--progress_bar", "false"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "rte" and res["n_train"] == 8 and res["n_eval"] == 4 and 0 <= res["accuracy"] <= 1
    assert (out / "DONE").is_file() and "| task | rte |" in (out / "report.md").read_text()


def test_eval_mlm_refuses_a_model_without_the_mlm_head(tmp_path, capsys):
    bare = save_tiny_model(tmp_path / "bare", "bert", "base", layers=1, hidden=32, heads=2)
    args = ["eval-mlm", "--model_name_or_path", str(bare), "--output_dir", str(tmp_path / "out"),
            "--validation_file", str(sample_path("wikitext/sample_text.txt")), "--device", "cpu"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "is BertModel, without the masked-LM head" in line, line
    assert "cls.predictions" in line and "--allow_random_head" not in line and not (tmp_path / "out").exists()


def test_ner_labels_first_subtoken_only(student):
    from diito.eval.ner import encode, read_conll_json
    from transformers import AutoTokenizer

    rows = read_conll_json(str(sample_path("conll/sample.json")))
    tok = AutoTokenizer.from_pretrained(student)
    labels = sorted({t for _, tags in rows for t in tags})
    l2i = {t: i for i, t in enumerate(labels)}
    feats = encode(tok, rows[:3], l2i, 128)
    for f, (_words, tags) in zip(feats, rows[:3]):
        kept = f["labels"][f["labels"] != -100].tolist()
        assert kept == [l2i[t] for t in tags]  # one label per word, in order


def test_eval_ner_and_qa_run(student, tmp_path):
    assert (
        main(
            [
                "eval-ner",
                "--model_name_or_path",
                str(student),
                "--train_file",
                str(sample_path("conll/sample.json")),
                "--output_dir",
                str(tmp_path / "ner"),
                "--device",
                "cpu",
                "--num_train_epochs",
                "1",
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "ner" / "results.json").read_text())
    assert {"precision", "recall", "f1", "accuracy"} <= set(res)
    args = ["eval-qa", "--model_name_or_path", str(student), "--train_file", str(sample_path("squad/sample.json")), "--validation_file",
            str(sample_path("squad/dev-v2.0-sample.json")), "--output_dir", str(tmp_path / "qa"), "--device", "cpu", "--num_train_epochs", "1",
            "--max_seq_length", "96", "--doc_stride", "32"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((tmp_path / "qa" / "results.json").read_text())
    assert 0 <= res["exact_match"] <= res["f1"] <= 100 and res["n_eval"] == 14


def test_qa_features_locate_answers(student):
    from diito.config import EvalQaConfig
    from diito.eval.qa import _windows, read_squad, train_features
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    examples = [e for e in read_squad(str(sample_path("squad/sample.json"))) if e["answers"]["text"]]
    cfg = EvalQaConfig(max_seq_length=384, doc_stride=128)
    feats = train_features(tok, examples, cfg)
    owner = _windows(tok, examples, cfg)["overflow_to_sample_mapping"]
    found = set()
    for f, i in zip(feats, owner, strict=True):
        ex = examples[i]
        s, e = int(f["start_positions"]), int(f["end_positions"])
        if s > 0:
            span = tok.decode(f["input_ids"][s : e + 1]).replace(" ", "").lower()
            assert span == ex["answers"]["text"][0].replace(" ", "").lower()
            found.add(i)
    assert len(found) == len(examples)  # every answer lies in at least one window


def _glue_args(student, out, *extra):
    return ["eval-glue", "--model_name_or_path", str(student), "--task_name", "mrpc",
            "--train_file", str(sample_path("glue/mrpc/train.tsv")), "--validation_file", str(sample_path("glue/mrpc/dev.tsv")),
            "--output_dir", str(out), "--device", "cpu", "--num_train_epochs", "4", "--max_seq_length", "32",
            "--per_device_train_batch_size", "4", *extra]  # fmt: skip


FINE_TUNES = {
    "eval-glue": ["--task_name", "mrpc", "--train_file", "glue/mrpc/train.tsv", "--validation_file", "glue/mrpc/dev.tsv",
                  "--max_seq_length", "32", "--num_train_epochs", "4"],
    "eval-ner": ["--train_file", "conll/sample.json", "--max_seq_length", "48", "--num_train_epochs", "2"],
    "eval-qa": ["--train_file", "squad/sample.json", "--max_seq_length", "64", "--doc_stride", "16",
                "--max_eval_samples", "4", "--max_train_samples", "6", "--num_train_epochs", "2"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(FINE_TUNES))
def test_killed_fine_tune_resumes_bit_exactly_with_dropout(
    tmp_path, monkeypatch, same_training_state, command
):
    import diito.eval.common as common

    student = save_tiny_model(
        tmp_path / "student",
        "distilbert",
        "mlm",
        layers=1,
        hidden=32,
        heads=2,
        dropout=0.1,
        attention_dropout=0.1,
    )
    monkeypatch.setattr(common, "drop_checkpoints", lambda cfg: None)  # keep last.ckpt to compare

    def args(out):
        extra = [str(sample_path(a)) if a.endswith((".tsv", ".json")) else a for a in FINE_TUNES[command]]
        return [command, "--model_name_or_path", str(student), "--output_dir", str(tmp_path / out), "--device",
                "cpu", "--per_device_train_batch_size", "4", "--checkpoint_every_n_steps", "2", *extra]  # fmt: skip

    assert main(args("straight")) == 0
    original = common.FinetuneModule.training_step

    def dying(self, batch, i):
        if self.trainer.global_step == self.total - 1:  # dies in the last step, after a checkpoint
            raise RuntimeError("killed")
        return original(self, batch, i)

    with monkeypatch.context() as m:
        m.setattr(common.FinetuneModule, "training_step", dying)
        assert main(args("killed")) == 1
    killed = tmp_path / "killed" / "finetune"
    total = len(read_jsonl(tmp_path / "straight" / "finetune" / "metrics.jsonl"))
    assert (
        total >= 4 and torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] >= 2
    )
    assert not (tmp_path / "killed" / "results.json").exists()
    assert main(args("killed")) == 0
    same_training_state(
        tmp_path / "straight" / "finetune" / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt"
    )
    assert [r["step"] for r in read_jsonl(killed / "metrics.jsonl")] == list(range(total))
    assert json.loads((tmp_path / "killed" / "results.json").read_text()) == json.loads(
        (tmp_path / "straight" / "results.json").read_text()
    )


def test_compiled_fine_tune_equals_eager(student, tmp_path, monkeypatch):
    """eval-glue --compile (aot_eager in tests) trains to the eager fine-tune's weights and scores."""
    import diito.eval.common as common
    from torch._dynamo.utils import counters

    monkeypatch.setattr(common, "drop_checkpoints", lambda cfg: None)  # keep last.ckpt to compare

    def run(out, *extra):
        args = ["eval-glue", "--model_name_or_path", str(student), "--task_name", "mrpc", "--train_file",
                str(sample_path("glue/mrpc/train.tsv")), "--validation_file", str(sample_path("glue/mrpc/dev.tsv")),
                "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--max_train_samples", "12",
                "--progress_bar", "false", "--device", "cpu", "--output_dir", str(tmp_path / out), *extra]  # fmt: skip
        assert main(args) == 0
        ckpt = torch.load(tmp_path / out / "finetune" / "checkpoints" / "last.ckpt", weights_only=True)
        return ckpt["state_dict"], json.loads((tmp_path / out / "results.json").read_text())

    eager, eager_results = run("eager")
    graphs = counters["stats"]["unique_graphs"]
    compiled, compiled_results = run("compiled", "--compile")
    assert counters["stats"]["unique_graphs"] > graphs  # the model really ran compiled
    assert compiled.keys() == eager.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
    assert compiled_results["score"] == pytest.approx(eager_results["score"])


def test_fine_tune_checkpoints_are_removed_with_the_results_and_crafted_ones_refused(
    student, tmp_path, capsys, malicious_pickle
):
    out = tmp_path / "glue"
    assert main(_glue_args(student, out, "--checkpoint_every_n_steps", "2")) == 0
    assert (out / "results.json").is_file() and not (out / "finetune" / "checkpoints").exists()
    steps = [
        json.loads(line)["step"] for line in (out / "finetune" / "metrics.jsonl").read_text().splitlines()
    ]
    assert main(_glue_args(student, out)) == 1  # a finished fine-tune is refused without --overwrite ...
    assert "--overwrite" in capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        main(_glue_args(student, out, "--overwrite", "true")) == 0
    )  # ... and runs afresh with it, log replaced
    again = [
        json.loads(line)["step"] for line in (out / "finetune" / "metrics.jsonl").read_text().splitlines()
    ]
    assert again == steps
    (out / "finetune" / "checkpoints").mkdir()  # an interrupted run: no results, no DONE, a checkpoint
    (out / "results.json").unlink()
    (out / "DONE").unlink()
    marker = malicious_pickle(out / "finetune" / "checkpoints" / "last.ckpt")
    for command in ("eval-glue", "eval-ner", "eval-qa"):
        args = [command, "--model_name_or_path", str(student), "--output_dir", str(out), "--device", "cpu"]
        args += {
            "eval-glue": ["--train_file", str(sample_path("glue/mrpc/train.tsv")), "--validation_file", str(sample_path("glue/mrpc/dev.tsv"))],
            "eval-ner": ["--train_file", str(sample_path("conll/sample.json"))],
            "eval-qa": ["--train_file", str(sample_path("squad/sample.json"))],
        }[command]  # fmt: skip
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "cannot resume from" in err.strip().splitlines()[-1], command
        assert not marker.exists() and not (out / "results.json").exists()


def test_fine_tune_bad_inputs_fail_in_one_line_before_anything_is_written(student, tmp_path, capsys):
    out = tmp_path / "glue"

    def fails(code, *extra, train=sample_path("glue/mrpc/train.tsv")):
        args = _glue_args(student, out, *extra)
        args[args.index("--train_file") + 1] = str(train)
        assert main(args) == code
        err = capsys.readouterr().err
        assert "Traceback" not in err and not out.exists()
        return err.strip().splitlines()[-1]

    assert "--learning_rate must be > 0, got 0.0" in fails(2, "--learning_rate", "0")
    assert "--warmup_ratio must be >= 0, <= 1, got 2.0" in fails(2, "--warmup_ratio", "2")
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00binary")
    assert "UTF-8" in fails(2, "--config", str(tmp_path / "bad.yaml"))
    rows = sample_path("glue/mrpc/train.tsv").read_text(encoding="utf-8").splitlines()
    ragged = tmp_path / "train.tsv"
    ragged.write_text("\n".join([rows[0], rows[1] + "\tstray", *rows[2:]]) + "\n", encoding="utf-8")
    assert f"{ragged}, line 2:" in fails(1, train=ragged)


def test_unreadable_ner_and_squad_files_are_one_line_errors(student, tmp_path, capsys):
    (tmp_path / "ner.json").write_bytes('[{"tokens": ["caf\xe9"], "ner_tags": [0]}]'.encode("latin-1"))
    (tmp_path / "squad.json").write_text(
        json.dumps({"data": [{"question": "q?", "context": "c", "answers": {}}]})
    )
    for command, file, expected in (
        ("eval-ner", "ner.json", "cannot parse"),
        ("eval-qa", "squad.json", "question 1 lacks field 'id'"),
    ):
        args = [command, "--model_name_or_path", str(student), "--train_file", str(tmp_path / file)]
        assert main([*args, "--output_dir", str(tmp_path / "out"), "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and expected in err.strip().splitlines()[-1], err
        assert not (tmp_path / "out").exists()
