"""Bad input never yields a result (issue 12): malformed tables, non-finite training, untrusted pickles, bad
values and config files are one-line errors with the right exit code, no traceback, and no run folder."""

import pytest
import torch
from camels.cli import main
from camels.data import build_stream, load_rows, make_synthetic, read_loc_texts, read_table
from camels.weighting import CaMeLSWeightModel
from lmlab.errors import LmlabError
from lmlab.testing import save_tiny_model

NO_DROP = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("camels_bad")
    data = make_synthetic(root / "data", seed=0, n_qa=16, n_meta=4, n_test=3, n_loc=4)
    base = save_tiny_model(
        root / "base", "gpt2", "clm", hidden=16, layers=1, heads=2, positions=128, **NO_DROP
    )
    return root, data, base


def fails(capsys, argv, code, *needles):
    """Run the console script; it must exit with `code`, its last stderr line naming every needle."""
    capsys.readouterr()
    assert main([*argv, "--progress_bar", "false"]) == code, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"camels {argv[0]}: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def qa_args(data, base, out, **kw):
    opts = {"dataset": "synthetic", "model": str(base), "train_path": str(data / "qa_train.csv")}
    opts |= {"val_path": str(data / "qa_val.csv"), "max_steps": 2, "lt_batch_size": 4, "val_steps": 2}
    opts |= {"val_max_pairs": 2, "logger": "none", "output_dir": str(out), **kw}
    return ["qa-pretrain", *[x for k, v in opts.items() for x in (f"--{k}", str(v))]]


def eval_args(data, base, out, **kw):
    opts = {"dataset": "synthetic", "base_model": str(base), "test_path": str(data / "test.csv")}
    opts |= {"weight_model": "uniform", "max_text_len": 32, "generation_strategy": "greedy"}
    opts |= {"max_new_tokens": 2, "device": "cpu", "output_dir": str(out), **kw}
    return ["eval", *[x for k, v in opts.items() for x in (f"--{k}", str(v))]]


def meta_args(data, base, out, extra=(), **kw):
    opts = {"dataset": "synthetic", "base_model": str(base), "pretrained_model": str(base)}
    opts |= {"train_path": str(data / "train.csv"), "val_path": str(data / "val.csv")}
    opts |= {"loc_train_path": str(data / "owt_train.csv"), "loc_val_path": str(data / "owt_val.csv")}
    opts |= {"update_batch_size": 2, "reset_base_freq": 2, "grad_acc_steps": 1, "max_text_len": 32}
    opts |= {
        "val_steps": 1,
        "val_max_batches": 1,
        "logger": "none",
        "max_steps": 2,
        "output_dir": str(out),
        **kw,
    }
    return ["meta-train", *[x for k, v in opts.items() for x in (f"--{k}", str(v))], *extra]


# ------------------------------------------------------------------------------------------------- tables

HEADER = "text,question,answers\n"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("a doc,q?,yes,extra\nb doc,q2?,no\n", "line 2: 4 fields"),  # pandas made column 1 an index
        ("a doc,q?,yes\nb doc,q2?\n", "line 3: 2 fields"),  # pandas padded with NaN
        ("a doc,q?,yes\n,q2?,no\n", "line 3: column 'text' is empty"),
        ("a doc,q?,yes\nb doc,q2?,\n", "line 3: column 'answers' is empty"),  # became "" or "nan"
    ],
)
def test_malformed_csv_rows_are_errors_naming_the_line(tmp_path, body, needle):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + body)
    with pytest.raises(LmlabError, match=needle):
        load_rows("streamingqa", path)


def test_table_cells_stay_strings_and_json_blanks_are_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "a doc,What is it?,nan\nb doc,When?,1999\n")
    assert load_rows("streamingqa", path) == [("a doc", "What is it?", "nan"), ("b doc", "When?", "1999")]
    (tmp_path / "t.jsonl").write_text('{"text": "a", "question": "q", "answers": null}\n')
    with pytest.raises(LmlabError, match="row 1: column 'answers' is empty"):
        load_rows("streamingqa", tmp_path / "t.jsonl")
    (tmp_path / "loc.csv").write_text("raw_text\nsome text\n \n")
    with pytest.raises(LmlabError, match="line 3: column 'raw_text' is empty"):
        read_loc_texts(tmp_path / "loc.csv")


def test_archivalqa_paragraphs_sort_numerically(tmp_path):
    """CSV cells are strings: paragraph 10 must still come after paragraph 2."""
    path = tmp_path / "a.csv"
    path.write_text(
        "doc_id,para_num,ans_paragraph,question,answer\n1,10,tenth,q1,a\n1,2,second,q2,b\n1,x,bad,q3,c\n"
    )
    with pytest.raises(LmlabError, match="row 3: para_num 'x' is not a number"):
        build_stream("archivalqa", read_table(path), -1, 0, str(path))
    path.write_text("doc_id,para_num,ans_paragraph,question,answer\n1,10,tenth,q1,a\n1,2,second,q2,b\n")
    assert build_stream("archivalqa", read_table(path), -1, 0).docs == ["second", "tenth"]


def test_bad_table_on_the_command_line_writes_nothing(setup, tmp_path, capsys):
    _, data, base = setup
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "a doc,q?,yes,extra\n")
    out = tmp_path / "out"
    fails(capsys, qa_args(data, base, out, val_path=bad), 1, str(bad), "line 2")
    fails(capsys, eval_args(data, base, out, test_path=bad), 1, str(bad), "line 2")
    fails(capsys, meta_args(data, base, out, loc_val_path=bad), 1, str(bad))
    assert not out.exists()


# ----------------------------------------------------------------------------------------- non-finite


def test_non_finite_training_stops_with_the_step_and_term(setup, tmp_path, capsys):
    _, data, base = setup
    out = tmp_path / "qa"
    fails(capsys, qa_args(data, base, out, lr=1e30, max_steps=4), 1, "step 2", "qa_nll", "last.ckpt")
    assert not (out / "results.json").exists() and not (out / "checkpoints" / "last.ckpt").exists()
    out = tmp_path / "eval"
    args = eval_args(data, base, out, lr=1e30, optimizer="sgd", checkpoint_every_n_docs=1)
    fails(capsys, args, 1, "step 2", "weighted_nll")
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["camels_eval"]["docs_seen"] == 1
    assert not (out / "DONE").exists() and not (out / "results.json").exists()
    out = tmp_path / "meta"
    fails(capsys, meta_args(data, base, out, extra=["--outer_lr", "1e30"]), 1, "step 2", "not finite")
    assert not (out / "results.json").exists() and not (out / "DONE").exists()


# ---------------------------------------------------------------------------------------------- pickles


def test_malicious_pickles_are_refused_everywhere(setup, tmp_path, capsys, malicious_pickle):
    _, data, base = setup
    out = tmp_path / "out"
    evil = tmp_path / "evil.pt"
    marker = malicious_pickle(evil)
    with pytest.raises(LmlabError, match="weights_only"):
        CaMeLSWeightModel.from_checkpoint(evil)
    fails(capsys, eval_args(data, base, out, weight_model="CaMeLS", weight_model_path=evil), 1, str(evil))
    fails(capsys, eval_args(data, base, out, base_model_state_dict=evil), 1, "weights_only")
    fails(capsys, meta_args(data, base, out, base_model_state_dict=evil), 1, "weights_only")
    for args in (qa_args(data, base, out), eval_args(data, base, out), meta_args(data, base, out)):
        fails(capsys, [*args, "--resume", str(evil)], 1, str(evil), "weights_only")
    assert not out.exists()
    # a crafted last.ckpt in a run folder, resumed automatically
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints" / "last.ckpt"
    marker_last = malicious_pickle(last, wrap=lambda p: {"state_dict": {}, "camels": p, "camels_eval": p})
    for args in (qa_args(data, base, out), eval_args(data, base, out), meta_args(data, base, out)):
        fails(capsys, args, 1, str(last), "weights_only")
    assert not marker.exists() and not marker_last.exists()
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "last.ckpt"]


def test_a_checkpoint_of_another_command_is_refused(setup, tmp_path, capsys):
    _, data, base = setup
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "camels": {"batches_seen": 1}}, other)
    out = tmp_path / "out"
    fails(
        capsys,
        [*qa_args(data, base, out), "--resume", str(other)],
        1,
        "not a checkpoint of camels qa-pretrain",
    )
    fails(capsys, [*eval_args(data, base, out), "--resume", str(other)], 1, "not a checkpoint of camels eval")
    assert not out.exists()


# ------------------------------------------------------------------------------------- values and files


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("qa-pretrain", "lr", "-0.5"),
        ("qa-pretrain", "val_max_pairs", "0"),
        ("meta-train", "inner_lr", "0"),
        ("meta-train", "outer_lr", "-1"),
        ("meta-train", "c_kl", "-0.1"),
        ("eval", "min_threshold", "1.5"),
        ("eval", "max_text_len", "1"),
        ("eval", "checkpoint_every_n_docs", "-1"),
    ],
)
def test_out_of_range_values_are_usage_errors(tmp_path, capsys, command, flag, value):
    out = tmp_path / "out"
    fails(capsys, [command, f"--{flag}", value, "--output_dir", str(out)], 2, f"--{flag} must be")
    assert not out.exists()


def test_bad_config_files_and_combinations_are_usage_errors(tmp_path, capsys):
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"lr: 1\n\xff\xfe\x00garbage")
    out = tmp_path / "out"
    for command in ("qa-pretrain", "meta-train", "eval"):
        fails(capsys, [command, "--config", str(binary), "--output_dir", str(out)], 2, "not UTF-8")
    fails(
        capsys,
        ["eval", "--weight_model", "uniform", "--grad_acc_steps", "2", "--checkpoint_every_n_docs", "3"],
        2,
        "multiple of --grad_acc_steps",
    )
    assert not out.exists()


def test_inputs_are_checked_before_the_run_folder(setup, tmp_path, capsys):
    """Every input of a command is read before it writes anything: here the ones used late in the run."""
    _, data, base = setup
    out = tmp_path / "out"
    missing = tmp_path / "missing.csv"
    light = {"qa_lt_final": "true", "qa_train_path": str(missing), "qa_val_path": str(data / "qa_val.csv")}
    fails(capsys, eval_args(data, base, out, **light), 1, str(missing))
    small = save_tiny_model(tmp_path / "small", "gpt2", "clm", hidden=16, layers=1, heads=2, vocab_size=50)
    fails(capsys, qa_args(data, base, out, model=small, tokenizer_name=base), 1, "embeds only 50")
    fails(capsys, meta_args(data, base, out, extra=["--pretrained_model", str(small)]), 1, "embeds only 50")
    assert not out.exists()
    done = tmp_path / "done"
    done.mkdir()
    (done / "DONE").write_text("finished\n")
    fails(capsys, eval_args(data, base, done), 1, "finished run")
