"""lmlab.io, lmlab.config, lmlab.logging, lmlab.seed, lmlab.plots."""

import dataclasses
import enum
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lmlab.config import config_to_dict, load_config_file, save_config
from lmlab.errors import LmlabError
from lmlab.io import (
    atomic_write,
    is_done,
    load_safetensors,
    mark_done,
    prepare_run_dir,
    save_safetensors,
    write_json,
    write_results,
)
from lmlab.logging import JsonlLogger, get_logger, read_jsonl
from lmlab.plots import plot_curves
from lmlab.seed import seed_everything


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Cfg:
    a: int = 1
    color: Color = Color.RED
    path: Path = Path("x/y")
    items: tuple = (1, 2)


def test_config_round_trip_yaml_and_json(tmp_path):
    path = save_config(Cfg(), tmp_path / "config.yaml")
    assert load_config_file(path) == {"a": 1, "color": "red", "path": "x/y", "items": [1, 2]}
    assert config_to_dict(Cfg(a=3))["a"] == 3
    (tmp_path / "c.json").write_text('{"b": 2}')
    assert load_config_file(tmp_path / "c.json") == {"b": 2}
    (tmp_path / "empty.yaml").write_text("")
    assert load_config_file(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize(
    ("name", "text", "match"), [("l.yaml", "- 1\n", "mapping"), ("b.json", "{", "cannot parse")]
)
def test_bad_config_files(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(LmlabError, match=match):
        load_config_file(tmp_path / name)
    with pytest.raises(LmlabError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with atomic_write(path) as fh:
        fh.write("new")
    assert path.read_text() == "new"


def test_safetensors_round_trip_and_errors(tmp_path):
    base = torch.randn(4, 3)
    tensors = {"w": base, "view": base[:, 1], "i": torch.arange(5)}
    path = save_safetensors(tensors, tmp_path / "m.safetensors", metadata={"kind": "test"})
    back = load_safetensors(path)
    assert set(back) == set(tensors)
    for k in tensors:
        assert torch.equal(back[k], tensors[k])
    with pytest.raises(LmlabError, match="does not exist"):
        load_safetensors(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(LmlabError, match="cannot read"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_run_dir_refuses_finished_run_unless_overwrite(tmp_path):
    run = prepare_run_dir(tmp_path / "run")
    (run / "partial.txt").write_text("x")
    assert prepare_run_dir(run) == run  # unfinished: reused so the run can resume
    mark_done(run)
    assert is_done(run)
    with pytest.raises(LmlabError, match="finished run"):
        prepare_run_dir(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "extra").mkdir()
    prepare_run_dir(run, overwrite=True, also=[run / "extra"])
    assert not is_done(run)  # the finished run's outputs are gone: the new run cannot pass for the old one
    assert not (run / "metrics.jsonl").exists() and not (run / "extra").exists()
    assert (run / "partial.txt").exists()  # files that are not run outputs stay
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert prepare_run_dir(run) == run and (run / "metrics.jsonl").exists()  # unfinished: resumes
    assert prepare_run_dir(run, overwrite=True) == run and not (run / "metrics.jsonl").exists()  # afresh


def test_results_json_and_csv(tmp_path):
    j, c = write_results([{"a": 1, "b": 2.5}, {"a": 2, "c": "x"}], tmp_path, name="res")
    assert json.loads(j.read_text()) == [{"a": 1, "b": 2.5}, {"a": 2, "c": "x"}]
    assert c.read_text().splitlines() == ["a,b,c", "1,2.5,", "2,,x"]
    j1, _ = write_results({"only": 1}, tmp_path)
    assert json.loads(j1.read_text()) == {"only": 1}
    assert json.loads(write_json(tmp_path / "p.json", {"p": Path("z")}).read_text()) == {"p": "z"}


def test_jsonl_logger_appends(tmp_path):
    logger = JsonlLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": torch.tensor(1.5)}, step=1)
    JsonlLogger(tmp_path).log_metrics({"loss": 1.0}, step=2)  # a resumed run appends
    assert read_jsonl(logger.experiment) == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.0}]
    assert json.loads((tmp_path / "hparams.json").read_text()) == {"lr": 0.1}
    assert (logger.name, logger.version, logger.save_dir) == ("jsonl", 0, str(tmp_path))
    assert get_logger("lmlab.test") is get_logger("lmlab.test")


def test_seed_everything_repeats_all_generators():
    def draw():
        import random

        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(4, deterministic=True)
    assert draw() != first
    torch.use_deterministic_algorithms(False)


def test_plot_curves_writes_png(tmp_path):
    path = plot_curves(
        [0, 1, 2], {"a": [1, 2, 3], "b": [3, 2, 1]}, tmp_path / "p.png", "x", "y", title="t", logy=True
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
    path2 = plot_curves(
        {"a": [0, 1], "b": [0, 2, 4]}, {"a": [1, 2], "b": [1, 2, 3]}, tmp_path / "q.png", "x", "y"
    )
    assert path2.stat().st_size > 1000
    with pytest.raises(ValueError, match="2 values for 3"):
        plot_curves([0, 1, 2], {"a": [1, 2]}, tmp_path / "r.png", "x", "y")


def test_finish_run_writes_the_shared_layout_with_done_last(tmp_path):
    from lmlab.io import finish_run, is_done, results_report
    from transformers import AutoConfig, BertConfig

    def export(folder):
        assert not is_done(tmp_path)  # DONE comes after everything else
        BertConfig(
            hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
        ).save_pretrained(folder)

    results = {"accuracy": 0.75, "eval": {"loss": 1.25, "steps": 3}, "per_seed": [1, 2]}
    report = results_report("tiny run", results, "What was run.")
    finish_run(tmp_path, results, report, export=export)
    assert is_done(tmp_path) and AutoConfig.from_pretrained(tmp_path / "model").hidden_size == 8
    assert json.loads((tmp_path / "results.json").read_text()) == results
    text = (tmp_path / "report.md").read_text()
    assert (
        text.startswith("# tiny run\n\nWhat was run.\n")
        and "| eval.loss | 1.25 |" in text
        and "per_seed" not in text
    )
    finish_run(tmp_path, {"accuracy": 0.5}, report, export=export)  # a rerun replaces the export whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DONE", "model", "report.md", "results.json"]


def test_refuse_finished_and_clear_run(tmp_path):
    from lmlab.io import clear_run, refuse_finished

    refuse_finished(tmp_path, overwrite=False)  # nothing finished here
    for name in ("checkpoints", "model"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("x")
    for name in ("metrics.jsonl", "results.json", "report.md", "keep.txt", "extra.csv"):
        (tmp_path / name).write_text("x")
    (tmp_path / "old").symlink_to(tmp_path / "model")
    mark_done(tmp_path)
    with pytest.raises(LmlabError, match="holds a finished run; pass --overwrite true"):
        refuse_finished(tmp_path, overwrite=False)
    refuse_finished(tmp_path, overwrite=True)
    clear_run(tmp_path, also=[tmp_path / "extra.csv", tmp_path / "old"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
