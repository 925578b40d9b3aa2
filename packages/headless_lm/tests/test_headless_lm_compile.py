"""--compile (issue 13): a `gpt` run with the model torch.compiled trains to the same weights as the eager run
(tolerance: the compiled graph may fuse differently), and its checkpoint keeps the eager keys."""

import importlib.util
from pathlib import Path

import lmlab.training
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
