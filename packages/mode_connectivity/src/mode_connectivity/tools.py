"""`dist` (distances between checkpoints of one method) and `cartography-process` (spec §8.2, §10)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

from mode_connectivity.barriers import distances
from mode_connectivity.models import check_kind, load_checkpoint


def run_dist(cfg) -> dict[str, Any]:
    a, meta_a = load_checkpoint(cfg.input1)
    b, meta_b = load_checkpoint(cfg.input2)
    check_kind(meta_a, cfg.type, cfg.input1)
    check_kind(meta_b, cfg.type, cfg.input2)
    aliases = {**meta_a.get("aliases", {}), **meta_b.get("aliases", {})}
    d = distances(a, b, aliases)
    lines = [
        f"L2 distance: {d['l2']:.6f}",
        f"Cosine similarity: {d['cosine_similarity']:.6f}",
        f"Number of parameters: {d['n_params']}",
        f"Average L2 distance (RMS): {d['rms']:.8f}",
    ]
    print("\n".join(lines))
    if cfg.path:
        out = Path(cfg.path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distance.txt").write_text(f"{cfg.input1}\n{cfg.input2}\n" + "\n".join(lines) + "\n")
        (out / "distance.json").write_text(
            json.dumps({"input1": cfg.input1, "input2": cfg.input2, **d}, indent=1)
        )
    return d


def example_statistics(cartography: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Per example: confidence = mean over epochs, variability = population std, correctness = mean acc,
    turns = number of epoch-to-epoch changes of acc."""
    out = {}
    for key, rec in cartography.items():
        conf, acc = rec["confidence"], rec["acc"]
        if not conf or len(conf) != len(acc):
            raise LmlabError(f"cartography entry {key} has {len(acc)} acc and {len(conf)} confidence values")
        out[key] = {
            "confidence": sum(conf) / len(conf),
            "variability": statistics.pstdev(conf),
            "correctness": sum(acc) / len(acc),
            "turns": float(sum(1 for x, y in zip(acc, acc[1:], strict=False) if x != y)),
        }
    return out


def forgotten_transitions(
    cartography: dict[str, dict[str, list[float]]], analysis: dict[str, dict[str, list[int]]]
) -> list[dict[str, Any]]:
    """Walk the grid of `analysis` in order; newly forgotten = in this point's zero_list, not in the previous
    one's (all of it at the first point, previous label "start"); mean statistics over that set (0 if empty)."""
    stats = example_statistics(cartography)
    points = sorted(analysis, key=float)
    prev_label, prev_zero = "start", set()
    rows = []
    for p in points:
        zero = set(analysis[p]["zero_list"])
        new = sorted(zero - prev_zero)
        missing = [i for i in new if str(i) not in stats]
        if missing:
            raise LmlabError(
                f"example {missing[0]} of the analysis is not in the cartography file (different train set?)"
            )
        row: dict[str, Any] = {"transition": f"{prev_label} ===> {p}", "count": len(new)}
        for k in ("correctness", "confidence", "variability", "turns"):
            row[k] = sum(stats[str(i)][k] for i in new) / len(new) if new else 0.0
        rows.append(row)
        prev_label, prev_zero = p, zero
    return rows


def run_cartography_process(cfg) -> list[dict[str, Any]]:
    for p in (cfg.cartography_path, cfg.analysis_path):
        if not Path(p).is_file():
            raise LmlabError(f"{p} does not exist")
    carto = json.loads(Path(cfg.cartography_path).read_text())
    analysis = json.loads(Path(cfg.analysis_path).read_text())
    rows = forgotten_transitions(carto, analysis)
    save = Path(cfg.save_path)
    save.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        lines.append(
            f"{r['transition']}\tcount {r['count']}\tcorrectness {r['correctness']:.4f}\tconfidence {r['confidence']:.4f}\t"
            f"variability {r['variability']:.4f}\tturns {r['turns']:.4f}"
        )
    save.write_text("\n".join(lines) + "\n")
    save.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return rows
