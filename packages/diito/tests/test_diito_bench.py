"""`diito bench` writes one row per mode with ratios; on CUDA the fused DIITO step meets the spec's bound."""

import json

import pytest
import torch
from diito.cli import main


def test_bench_tiny_cpu(tmp_path):
    args = [
        "bench",
        "--size",
        "tiny",
        "--batch_size",
        "4",
        "--seq_len",
        "32",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--output_dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [r["mode"] for r in rows] == ["standard", "diito", "diito-separate"]
    assert rows[0]["ratio_to_standard"] == 1.0
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert "| diito |" in (tmp_path / "bench.md").read_text()


@pytest.mark.gpu
def test_bench_base_cuda_ratio(tmp_path):
    assert torch.cuda.is_available()
    assert main(["bench", "--device", "cuda", "--output_dir", str(tmp_path), "--steps", "10"]) == 0
    rows = {r["mode"]: r for r in json.loads((tmp_path / "bench.json").read_text())}
    assert rows["diito"]["ratio_to_standard"] <= 3.0
    assert rows["diito"]["median_step_s"] < rows["diito-separate"]["median_step_s"]
