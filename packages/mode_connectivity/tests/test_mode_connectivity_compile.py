"""Issue 13: `--compile` torch.compiles the model a training command trains (in place, so checkpoints keep their
keys), and a compiled run's updates equal the eager run's within float tolerance."""

from pathlib import Path

import pytest
import torch
from mode_connectivity import train
from mode_connectivity.cli import main
from mode_connectivity.make_tiny import build_t5, build_tokenizer, synthetic_tasks
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc_compile")
    tok = build_tokenizer(root / "model")
    build_t5(root / "model", tok, d_model=32, num_layers=1, num_heads=2, d_ff=32, seed=0, dropout=0.0)
    task = synthetic_tasks(root / "data", n_train=8, n_eval=4, seed=0)["tiny-nli"]
    return {"model": str(root / "model"), "task": str(task)}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    return ckpt["state_dict"]


def test_compiled_train_step_equals_eager(tiny, tmp_path, monkeypatch):
    compiled = []
    real = train.compile_module

    def spy(module, enabled=True):
        compiled.append(enabled)
        return real(module, enabled)

    monkeypatch.setattr(train, "compile_module", spy)

    def run(out, flag):
        args = [
            "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "model",
            "--learning_rate_list", "1e-2", "--bsz_list", "4", "--train_iters", "2", "--do_valid", "false",
            "--do_predict", "false", "--max_input_length", "32", "--max_output_length", "8", "--device", "cpu",
            "--progress_bar", "false", "--logger", "none", "--compile", flag, "--output_dir", str(out),
        ]  # fmt: skip
        assert main(args) == 0

    run(tmp_path / "eager", "false")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run(tmp_path / "compiled", "true")
    assert compiled == [False, True]
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # the step really ran through a captured graph
    eager, comp = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert eager.keys() == comp.keys()  # in-place compile: the checkpoint keys are the eager module's
    init = load_file(Path(tiny["model"]) / "model.safetensors")
    moved = [k for k in eager if k.removeprefix("model.") in init and not torch.equal(eager[k], init[k[6:]])]
    assert moved  # both runs trained, so equal weights are not the untouched initial ones
    for k in eager:
        torch.testing.assert_close(comp[k], eager[k], rtol=1e-4, atol=1e-5)
