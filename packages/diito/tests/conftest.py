"""Helpers shared by diito's resume tests."""

from pathlib import Path

import pytest
import torch


def _tensors(obj, prefix=""):
    """Every tensor (and number) inside a checkpoint's nested dicts/lists, by path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, list | tuple):
        return {k: v for i, val in enumerate(obj) for k, v in _tensors(val, f"{prefix}/{i}").items()}
    return {prefix: obj} if isinstance(obj, torch.Tensor | int | float) else {}


def assert_same_training_state(a: Path, b: Path) -> None:
    """Weights, optimiser and scheduler state of two last.ckpt files are bit-identical."""
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["global_step"] == cb["global_step"]
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        ta, tb = _tensors(ca[key]), _tensors(cb[key])
        assert ta.keys() == tb.keys() and ta, key
        for k in ta:
            if isinstance(ta[k], torch.Tensor):
                assert torch.equal(ta[k], tb[k]), f"{key}{k}"
            else:
                assert ta[k] == tb[k], f"{key}{k}"


@pytest.fixture
def same_training_state():
    """`same_training_state(a, b)`: assert two last.ckpt files hold bit-identical training states."""
    return assert_same_training_state
