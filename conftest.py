"""Root test configuration: offline, one thread, a private HF_HOME, and `gpu` tests skipped without CUDA.

The environment is set at import time, before any test module imports a Hugging Face library.
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "disabled"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lmlab-hf-home-"))
os.environ.setdefault("MPLBACKEND", "Agg")
# --compile in tests: the graph capture of torch.compile without minutes of kernel builds
os.environ.setdefault("LMLAB_COMPILE_BACKEND", "aot_eager")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


class _Payload:
    """Unpickling this runs code: it creates the marker file (a stand-in for what an attacker would run)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def malicious_pickle(tmp_path):
    """A factory: `malicious_pickle(path, wrap=None)` writes a torch checkpoint at `path` holding an object whose
    unpickling creates a marker file, and returns the marker's path. `wrap(payload)` places the payload inside
    a real-looking checkpoint dict. A loading path is safe when it refuses the file and the marker never appears.
    """

    def make(path, wrap=None):
        marker = tmp_path / f"pwned-{abs(hash(str(path)))}"
        payload = _Payload(str(marker))
        torch.save(wrap(payload) if wrap else {"state_dict": payload}, path)
        return marker

    return make


def _assert_same(a, b, where="ckpt"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def same_state():
    """`same_state(a, b, where)`: two nested containers (checkpoints, state dicts) are equal, every tensor
    bit for bit (torch.equal, same dtype); a failure names the path of the first difference."""
    return _assert_same
