"""Plots: metric curves to PNG with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(
    x: Sequence[float] | Mapping[str, Sequence[float]],
    series: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Path:
    """Draw one line per entry of `series` against `x` and save a PNG at `path`.

    `x` is one sequence shared by every series, or a mapping giving each series its own x values (for runs
    logged at different steps). Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, ys in series.items():
        xs = x[label] if isinstance(x, Mapping) else x
        if len(xs) != len(ys):
            raise ValueError(f"series {label!r} has {len(ys)} values for {len(xs)} x values")
        ax.plot(list(xs), list(ys), marker="o" if len(ys) <= 25 else None, markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
