"""Files: safetensors weights, atomic writes, run directories, results as JSON and CSV."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmlab.errors import LmlabError

DONE_MARKER = "DONE"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary file beside `path`, then rename it over `path`: readers never see half a file,
    and an exception leaves any previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")
    return Path(path)


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Save tensors (made contiguous, shared storage broken) to a `.safetensors` file atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a `.safetensors` file; a missing or corrupt file is an LmlabError."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"weights file {path} does not exist")
    try:
        return load_file(str(path), device=device)
    except Exception as err:
        raise LmlabError(f"cannot read weights file {path}: {err}") from err


def prepare_run_dir(path: str | os.PathLike, overwrite: bool = False, also: Iterable[Path] = ()) -> Path:
    """Create the run directory, with the one meaning of `--overwrite` in every command: a finished run (one with
    a DONE marker) is refused unless `overwrite`, so a finished result is never clobbered by accident; with it,
    the earlier run's outputs (`clear_run`, and `also`) are removed so the new run starts afresh. Without it an
    unfinished run is reused, which lets it resume."""
    path = Path(path)
    refuse_finished(path, overwrite)
    if overwrite:
        clear_run(path, also)
    path.mkdir(parents=True, exist_ok=True)
    return path


def refuse_finished(path: str | os.PathLike, overwrite: bool) -> None:
    """The one check every command makes before any work: a folder holding a finished run (DONE) is refused
    unless `--overwrite`."""
    if is_done(path) and not overwrite:
        raise LmlabError(f"{path} holds a finished run; pass --overwrite true or choose another --output_dir")


RUN_OUTPUTS = ("DONE", "checkpoints", "logs", "metrics.jsonl", "model", "results.json", "report.md")


def clear_run(folder: str | os.PathLike, also: Iterable[Path] = ()) -> None:
    """`--overwrite` of a finished run: remove what it wrote (the shared layout, `RUN_OUTPUTS`, and `also`) so
    the new run starts at step 0 and nothing of the old one passes for its own."""
    folder = Path(folder)
    for path in [*(folder / name for name in RUN_OUTPUTS), *also]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # under ddp every rank clears; one of them wins
        else:
            path.unlink(missing_ok=True)


def mark_done(path: str | os.PathLike) -> None:
    """Mark a run directory finished (see `prepare_run_dir`)."""
    Path(path, DONE_MARKER).write_text("finished\n", encoding="utf-8")


def is_done(path: str | os.PathLike) -> bool:
    return Path(path, DONE_MARKER).exists()


def write_results(
    rows: dict[str, Any] | list[dict[str, Any]], out_dir: str | os.PathLike, name: str = "results"
) -> tuple[Path, Path]:
    """Write results as `<name>.json` and `<name>.csv` (one row per dict; columns in first-seen order)."""
    rows = [rows] if isinstance(rows, dict) else list(rows)
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / f"{name}.json", rows[0] if len(rows) == 1 else rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    csv_path = out_dir / f"{name}.csv"
    with atomic_write(csv_path) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    return json_path, csv_path


def _scalars(results: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in results.items():
        if isinstance(value, dict):
            rows += _scalars(value, f"{prefix}{key}.")
        elif isinstance(value, int | float | str | bool) or value is None:
            rows.append((f"{prefix}{key}", value))
    return rows


def results_report(title: str, results: dict[str, Any], text: str = "") -> str:
    """A report.md: a title, optional text, and every scalar of `results` (nested keys joined by dots)."""
    lines = [f"# {title}", ""]
    if text:
        lines += [text.rstrip(), ""]
    lines += ["| result | value |", "| --- | --- |"]
    for key, value in _scalars(results):
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines) + "\n"


def finish_run(
    out_dir: str | os.PathLike,
    results: dict[str, Any],
    report: str,
    export: Any = None,
) -> Path:
    """Close a run folder in the one layout every command shares: `model/` (written by `export(folder)`, e.g. a
    `save_pretrained`, into a temporary folder renamed into place), `results.json`, `report.md`, then `DONE`, so
    a folder with DONE always holds complete results. Returns the folder."""
    out = Path(out_dir)
    Path(out, DONE_MARKER).unlink(missing_ok=True)  # rewriting a finished folder: not finished until the end
    if export is not None:
        tmp = out / ".model.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        export(tmp)
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        tmp.rename(out / "model")
    write_json(out / "results.json", results)
    with atomic_write(out / "report.md") as fh:
        fh.write(report)
    mark_done(out)
    return out
