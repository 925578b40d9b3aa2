"""--compile (issue 13): a `gpt` and a `glue` run with the model torch.compiled train to the same weights as eager runs
(tolerance: the compiled graph may fuse differently), and its checkpoint keeps the eager keys."""

import importlib.util
from pathlib import Path

import lmlab.training
import pytest
import torch
from headless_lm.cli import main

# the resume tests' tiny dropout-on `gpt` run (tests import in importlib mode: no sibling imports)
_spec = importlib.util.spec_from_file_location(
    "resume_tests", Path(__file__).with_name("test_headless_lm_resume.py")
)
_resume = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_resume)


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_compiled_gpt_training_step_equals_eager(tmp_path, monkeypatch):
    compiled = []
    original = lmlab.training.compile_module

    def spy(module, enabled=True):
        compiled.append(enabled)
        return original(module, enabled)

    monkeypatch.setattr(lmlab.training, "compile_module", spy)
    eager, graph = tmp_path / "eager", tmp_path / "compiled"
    assert main(["gpt", *_resume._gpt_args(tmp_path, eager, 2)]) == 0
    assert main(["gpt", *_resume._gpt_args(tmp_path, graph, 2), "--compile", "true"]) == 0
    assert compiled == [False, True]
    a, b = _weights(eager), _weights(graph)
    assert a.keys() == b.keys()  # no _orig_mod. prefixes: compiled in place
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    assert (graph / "model" / "config.json").is_file()  # the export of a compiled model works


@pytest.mark.slow  # graph capture of the backbone in train and eval mode, per padded length
def test_compiled_glue_step_equals_eager(tmp_path, monkeypatch):
    from lmlab.data import sample_path
    from lmlab.testing import save_tiny_model

    compiled = []
    original = lmlab.training.compile_module
    monkeypatch.setattr(
        lmlab.training,
        "compile_module",
        lambda m, enabled=True: compiled.append(enabled) or original(m, enabled),
    )
    model = save_tiny_model(tmp_path / "bert", "bert", "base")  # dropout 0.1
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    for split in ("train", "dev"):
        (tmp_path / "glue" / "MRPC" / f"{split}.tsv").write_text(
            sample_path(f"glue/mrpc/{split}.tsv").read_text()
        )

    def run(name: str, *extra: str) -> dict:
        args = ["glue", "--model", str(model), "--tasks", "mrpc", "--seeds", "0", "--max_steps", "2"]
        args += ["--batch_size", "2", "--learning_rate", "1e-3", "--data_dir", str(tmp_path / "glue")]
        assert main([*args, "--output_dir", str(tmp_path / name), "--device", "cpu", *extra]) == 0
        return _weights(tmp_path / name / "mrpc" / "seed0")

    a, b = run("eager"), run("compiled", "--compile", "true")
    assert compiled == [False, True] and a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
