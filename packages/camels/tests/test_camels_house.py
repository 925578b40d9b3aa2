"""Issue 14 in camels: the common flags mean what they mean elsewhere (--val_check_interval, grad_acc_steps as an
alias of --accumulate_grad_batches), the weighting model is a `model/` folder that transformers loads, a
tokenizer without EOS works, and `eval --eval ppl` prints its summary line."""

import json

import pytest
import torch
from camels.cli import main
from camels.data import collate_qa, make_synthetic
from camels.models import load_tokenizer
from camels.weighting import CaMeLSWeightModel
from lmlab.errors import LmlabError
from lmlab.testing import save_tiny_model, tiny_config, tiny_tokenizer, tiny_tokenizer_dir

NO_DROP = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("camels_house")
    data = make_synthetic(root / "data", seed=0, n_qa=16, n_meta=4, n_test=3, n_loc=4)
    base = save_tiny_model(
        root / "base", "gpt2", "clm", hidden=16, layers=1, heads=2, positions=128, **NO_DROP
    )
    return root, data, base


def test_qa_pretrain_validates_every_val_check_interval_batches(setup, tmp_path):
    """--val_check_interval (batches, Lightning's meaning) decides over the reference's --val_steps (updates)."""
    _, data, base = setup
    args = ["qa-pretrain", "--dataset", "synthetic", "--model", str(base), "--train_path", str(data / "qa_train.csv"),
            "--val_path", str(data / "qa_val.csv"), "--lt_batch_size", "4", "--val_max_pairs", "2",
            "--val_steps", "100", "--max_steps", "4", "--logger", "none", "--progress_bar", "false"]  # fmt: skip
    assert main([*args, "--accumulate_grad_batches", "1", "--val_check_interval", "2",
                 "--output_dir", str(tmp_path / "a")]) == 0  # fmt: skip
    history = json.loads((tmp_path / "a" / "val_history.json").read_text())
    assert [h["step"] for h in history] == [0, 2, 4]
    # 3 batches with 2 per update: rounded up to whole updates (every 2 updates), never inside an update
    assert main([*args, "--accumulate_grad_batches", "2", "--val_check_interval", "3",
                 "--output_dir", str(tmp_path / "b")]) == 0  # fmt: skip
    history = json.loads((tmp_path / "b" / "val_history.json").read_text())
    assert [h["step"] for h in history] == [0, 2, 4]


def test_rerun_into_a_finished_run_is_refused_and_overwrite_starts_afresh(setup, tmp_path, capsys):
    _, data, base = setup
    args = ["qa-pretrain", "--dataset", "synthetic", "--model", str(base), "--train_path", str(data / "qa_train.csv"),
            "--val_path", str(data / "qa_val.csv"), "--lt_batch_size", "4", "--val_max_pairs", "2",
            "--val_steps", "1", "--accumulate_grad_batches", "1", "--logger", "none", "--progress_bar", "false",
            "--output_dir", str(tmp_path)]  # fmt: skip
    assert main([*args, "--max_steps", "2"]) == 0 and (tmp_path / "DONE").is_file()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*args, "--max_steps", "3"]) == 1  # a finished run is not continued without --overwrite
    assert "--overwrite" in capsys.readouterr().err.strip().splitlines()[-1]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
    assert main([*args, "--max_steps", "1", "--overwrite", "true"]) == 0
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert [h["step"] for h in json.loads((tmp_path / "val_history.json").read_text())] == [0, 1]
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 1


def test_grad_acc_steps_is_an_alias_of_accumulate_grad_batches(setup, capsys):
    _, data, base = setup
    args = ["meta-train", "--base_model", str(base), "--pretrained_model", str(base), "--print_config"]
    assert main([*args, "--grad_acc_steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "accumulate_grad_batches: 3" in printed and "grad_acc_steps" not in printed
    assert main([*args, "--grad_acc_steps", "3", "--accumulate_grad_batches", "2"]) == 2
    assert "grad_acc_steps" in capsys.readouterr().err


def test_weighting_model_folder_loads_with_auto_model_and_round_trips(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = CaMeLSWeightModel(
        tiny_config("gpt2", tiny_tokenizer("gpt2"), hidden=16, layers=1, heads=2), hidden=8
    ).eval()
    torch.nn.init.normal_(model.head[2].weight)  # a head that is not the zero initialisation
    model.save_pretrained(tmp_path / "model")
    encoder = AutoModel.from_pretrained(tmp_path / "model")
    assert all(
        torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), model.encoder.state_dict().values())
    )
    loaded = CaMeLSWeightModel.from_checkpoint(tmp_path / "model").eval()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones_like(ids)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() and all(torch.equal(state[k], loaded_state[k]) for k in state)
    with torch.no_grad():  # loaded with the default (SDPA) attention, built with eager: equal up to round-off
        torch.testing.assert_close(loaded(ids, mask), model(ids, mask), rtol=1e-5, atol=1e-6)
    (tmp_path / "model" / "camels_weighting.json").unlink()
    with pytest.raises(LmlabError, match="not a CaMeLS weighting model"):
        CaMeLSWeightModel.from_checkpoint(tmp_path / "model")


def test_tokenizer_without_eos_falls_back_to_sep(tmp_path, capsys):
    tok = load_tokenizer(str(tiny_tokenizer_dir("wordpiece")))  # BERT-style: [SEP], no EOS
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no EOS token" in lines[0] and "[SEP]" in lines[0]
    assert tok.eos_token_id == tok.sep_token_id is not None
    batch = collate_qa(tok, [("who?", "bob")], 32, True)
    last = int(batch["qa_mask"][0].sum()) - 1
    assert int(batch["qa_ids"][0, last]) == tok.sep_token_id == int(batch["qa_labels"][0, last])
    bare = tiny_tokenizer("wordpiece")
    bare.sep_token = None
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(LmlabError, match="neither an EOS nor a SEP"):
        load_tokenizer(str(tmp_path / "bare"))


def test_eval_ppl_prints_its_summary_line(setup, tmp_path, capsys):
    _, data, base = setup
    argv = ["eval", "--dataset", "synthetic", "--base_model", str(base), "--test_path", str(data / "test.csv"),
            "--weight_model", "uniform", "--max_text_len", "32", "--eval", "ppl", "--device", "cpu",
            "--progress_bar", "false", "--output_dir", str(tmp_path / "ppl")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "ppl" / "results.json").read_text())
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("[camels eval] uniform lr=0.0001: answer NLL ")
    assert f"{result['final_nll']:.4f}" in line and f"{result['final_ppl']:.2f}" in line
