"""The neuron-mapping (`.nm`) file: which teacher sites correspond to which student sites.

A variable string `$L:<layer>$H:<head>$[d0:d1]` names hidden dims `[h*hd + d0, h*hd + d1)` of the output of block
`layer` (hd = hidden_size / num_attention_heads), for every (layer, head) in the cartesian product of the two
fields, each an integer or a half-open range `[a:b]`. "H" only addresses a chunk of the residual vector of width hd,
not an attention head's output. Differences from the reference: the slice stop is `h*hd + d1` (the reference used
`h*hd + d0 + d1`, only right for d0 = 0), and every index is validated against the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from lmlab.errors import LmlabError

_FIELD = r"(\d+|\[\d+:\d+\])"
_VARIABLE = re.compile(r"^\$L:" + _FIELD + r"\$H:" + _FIELD + r"\$\[(\d+):(\d+)\]$")


@dataclass(frozen=True)
class Variable:
    """Site (block index) `layer`, head chunk `head`, dims `[d0, d1)` inside the chunk."""

    layer: int
    head: int
    d0: int
    d1: int


def _expand_field(text: str) -> list[int]:
    if text.startswith("["):
        a, b = (int(x) for x in text[1:-1].split(":"))
        return list(range(a, b))
    return [int(text)]


def parse_variable(name: str) -> list[Variable]:
    """Expand one variable string into its (layer, head, d0, d1) variables."""
    match = _VARIABLE.match(name.strip())
    if match is None:
        raise LmlabError(f"bad variable name {name!r}; expected the form $L:6$H:[0:12]$[0:64]")
    layers, heads = _expand_field(match.group(1)), _expand_field(match.group(2))
    d0, d1 = int(match.group(3)), int(match.group(4))
    if not layers or not heads:
        raise LmlabError(f"variable {name!r} names an empty layer or head range")
    return [Variable(k, h, d0, d1) for k in layers for h in heads]


@dataclass(frozen=True)
class MappingEntry:
    """One alignment: a teacher variable string and a student variable string, each possibly multi-site."""

    teacher: tuple[str, ...]
    student: tuple[str, ...]


def load_mapping(path_or_obj: str | Path | dict) -> list[MappingEntry]:
    """Read a `.nm` file (or its parsed JSON object) into mapping entries."""
    if isinstance(path_or_obj, dict):
        data, where = path_or_obj, "mapping"
    else:
        path = Path(path_or_obj)
        if not path.is_file():
            raise LmlabError(f"neuron mapping file {path} does not exist; pass --neuron_mapping PATH")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise LmlabError(f"neuron mapping file {path} is not JSON: {err}") from err
        where = str(path)
    if not isinstance(data, dict):
        raise LmlabError(f"{where} must hold a JSON object")
    entries: list[MappingEntry] = []
    if "interchange_variable_mappings" in data:
        for item in data["interchange_variable_mappings"]:
            teacher = tuple(item.get("teacher_variable_names", ()))
            student = tuple(item.get("student_variable_names", ()))
            if not teacher or not student:
                raise LmlabError(
                    f"{where}: every entry needs teacher_variable_names and student_variable_names"
                )
            for name in teacher + student:
                parse_variable(name)
            entries.append(MappingEntry(teacher, student))
    else:
        raise LmlabError(f"{where} has no 'interchange_variable_mappings' key")
    if not entries:
        raise LmlabError(f"{where} holds no mapping entry")
    return entries


def resolve_sites(
    name: str, n_layers: int, hidden_size: int, n_heads: int, who: str = "model"
) -> dict[int, torch.Tensor | None]:
    """Site -> boolean mask over hidden dims (None = the whole vector) for one variable string, validated."""
    if hidden_size % n_heads:
        raise LmlabError(f"{who} hidden size {hidden_size} is not divisible by its {n_heads} heads")
    hd = hidden_size // n_heads
    masks: dict[int, torch.Tensor] = {}
    for var in parse_variable(name):
        if not 0 <= var.layer < n_layers:
            raise LmlabError(
                f"mapping variable {name!r} names {who} layer {var.layer}, but the {who} has {n_layers} layers"
                f" (0..{n_layers - 1}); use a mapping file made for this {who}"
            )
        if not 0 <= var.head < n_heads:
            raise LmlabError(
                f"mapping variable {name!r} names {who} head chunk {var.head}, but it has {n_heads}"
            )
        if not 0 <= var.d0 < var.d1 <= hd:
            raise LmlabError(f"mapping variable {name!r}: dims [{var.d0}:{var.d1}] not inside 0..{hd}")
        mask = masks.setdefault(var.layer, torch.zeros(hidden_size, dtype=torch.bool))
        mask[var.head * hd + var.d0 : var.head * hd + var.d1] = True
    return {k: (None if bool(m.all()) else m) for k, m in sorted(masks.items())}


def validate_mapping(
    entries: list[MappingEntry], teacher_dims: tuple[int, int, int], student_dims: tuple[int, int, int]
) -> None:
    """Check every variable of every entry against (n_layers, hidden, heads) of teacher and student."""
    for entry in entries:
        for name in entry.teacher:
            resolve_sites(name, *teacher_dims, who="teacher")
        for name in entry.student:
            resolve_sites(name, *student_dims, who="student")
