"""Benchmarks that survive a noisy machine: arms timed in interleaved rounds (A, B, A, B, ... after warm-up), the
median and the min-max of each arm, the ratio of medians against a stated target, and the conditions of the run
(shapes, dtype, device, threads, library versions, commit) beside every number.

    times = interleave({"method": step_a, "baseline": step_b}, rounds=7, warmup=2, sync=sync)
    row = comparison("diito", "step time, BERT-base teacher", "diito", "standard", times, target="<= 1.12")
    write_bench([row], environment(device, "bf16", {"batch": 16, "seq": 128}), "results/diito", "bench")
"""

from __future__ import annotations

import operator
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def interleave(
    arms: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1, sync: Callable[[], Any] | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each arm: `warmup` untimed calls of every arm, then `rounds` rounds in which every arm
    runs once, the order rotating by one arm each round, so drift in the machine's load falls on all arms alike.
    `sync` (e.g. `torch.cuda.synchronize`) runs before each clock read."""
    if rounds < 1 or warmup < 0:
        raise LmlabError(
            f"a benchmark needs rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}"
        )
    sync = sync or (lambda: None)
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            arms[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def _met(ratio: float, target: str | None) -> bool | None:
    if target is None:
        return None
    op, _, value = target.partition(" ")
    if op not in COMPARE:
        raise LmlabError(f"a benchmark target reads like '<= 1.12' or '>= 1.8', got {target!r}")
    return bool(COMPARE[op](ratio, float(value)))


def comparison(
    package: str,
    measure: str,
    method: str,
    baseline: str,
    times: dict[str, Sequence[float]],
    target: str | None = None,
    speedup: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One row: the medians and min-max of `times[method]` and `times[baseline]` (seconds), their ratio (method /
    baseline; baseline / method with `speedup`, i.e. how many times faster the method is), the target it is held
    to (e.g. "<= 1.12") and whether it is met. `extra` adds columns (e.g. memory)."""
    m, b = list(times[method]), list(times[baseline])
    m_med, b_med = statistics.median(m), statistics.median(b)
    ratio = b_med / m_med if speedup else m_med / b_med
    return {
        "package": package,
        "measure": measure,
        "method": method,
        "baseline": baseline,
        "method_median": m_med,
        "baseline_median": b_med,
        "method_range": [min(m), max(m)],
        "baseline_range": [min(b), max(b)],
        "rounds": min(len(m), len(b)),
        "ratio": ratio,
        "target": target,
        "met": _met(ratio, target),
        **extra,
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def environment(device: Any, dtype: str, shapes: dict[str, Any]) -> dict[str, Any]:
    """The conditions of a benchmark: device (with the GPU's name), dtype, shapes, threads, versions, commit."""
    import importlib.metadata as md

    import torch

    name = str(device)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    versions = {}
    for package in ("torch", "transformers", "pytorch-lightning", "peft"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            continue
    return {
        "device": name,
        "dtype": dtype,
        "shapes": shapes,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": _commit(),
    }


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return "-".join(_fmt(v) for v in x)
    return "" if x is None else str(x)


def bench_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as one markdown table: measure, arms, medians (min-max), ratio, target, met."""
    lines = [
        "| package | measure | method | baseline | method median (min-max) s | baseline median (min-max) s "
        "| rounds | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        met = {True: "yes", False: "no", None: ""}[r["met"]]
        lines.append(
            f"| {r['package']} | {r['measure']} | {r['method']} | {r['baseline']} "
            f"| {_fmt(r['method_median'])} ({_fmt(r['method_range'])}) "
            f"| {_fmt(r['baseline_median'])} ({_fmt(r['baseline_range'])}) | {r['rounds']} "
            f"| {r['ratio']:.3f} | {r['target'] or ''} | {met} |"
        )
    return "\n".join(lines)


def describe(env: dict[str, Any]) -> str:
    """One line of conditions, printed and written with every bench."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    shapes = ", ".join(f"{k}={v}" for k, v in env["shapes"].items())
    return (
        f"device {env['device']}, {env['dtype']}, {env['threads']} thread(s) of {env['cpu_count']} cores, "
        f"shapes {shapes}; {versions}; python {env['python']}; commit {env['commit']}"
    )


def write_bench(
    rows: Sequence[dict[str, Any]], env: dict[str, Any], out_dir: str | os.PathLike, name: str
) -> Path:
    """Write `<name>.json` (the list of rows, each with its `environment`) and `<name>.md` (the conditions line
    and the table) under `out_dir`, and print the markdown to stdout. Returns the JSON path."""
    from lmlab.io import atomic_write, write_json

    out = Path(out_dir)
    path = write_json(out / f"{name}.json", [{**row, "environment": env} for row in rows])
    text = f"{describe(env)}\n\n{bench_table(rows)}\n"
    with atomic_write(out / f"{name}.md") as fh:
        fh.write(text)
    print(text, end="")
    return path


def collect(folder: str | os.PathLike, name: str) -> Path:
    """Join the rows of every `<folder>/<package>/bench.json` into `<folder>/../<name>.json` (one list of rows) and
    `<name>.md` (one table, the conditions of each package's run listed below it); print the table. This is what
    `make bench-cpu` and `make bench-gpu` end with."""
    import json

    from lmlab.io import atomic_write, write_json

    folder = Path(folder)
    files = sorted(folder.glob("*/bench.json"))
    if not files:
        raise LmlabError(f"no */bench.json under {folder}; run the packages' bench commands first")
    rows = [row for f in files for row in json.loads(f.read_text(encoding="utf-8"))]
    out = folder.parent
    path = write_json(out / f"{name}.json", rows)
    conditions = {row["package"]: describe(row["environment"]) for row in rows if "environment" in row}
    text = bench_table(rows) + "\n\n" + "\n".join(f"- {p}: {c}" for p, c in conditions.items()) + "\n"
    with atomic_write(out / f"{name}.md") as fh:
        fh.write(text)
    print(text, end="")
    return path
