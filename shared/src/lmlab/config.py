"""Config files: YAML or JSON in, the resolved dataclass config out as YAML in the run directory."""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

import yaml

from lmlab.errors import LmlabError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (an empty file gives {})."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LmlabError(
            f"config file {path} is not UTF-8 text (byte {err.start}); give a YAML or JSON file"
        ) from None
    except OSError as err:
        raise LmlabError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise LmlabError(f"cannot parse config file {path}: {err}".splitlines()[0]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmlabError(
            f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}"
        )
    return data


BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def option(help: str, default: Any = None, **bounds: float) -> Any:
    """A config field with its `--help` text and its declared range (`gt`, `ge`, `lt`, `le`), which the CLI checks
    after parsing (exit 2, one line naming the flag) and `--help` shows. A list or dict default is copied for each
    instance. `x: int = option("steps to train", 100, ge=1)`."""
    unknown = sorted(set(bounds) - set(BOUNDS))
    if unknown:
        raise TypeError(f"option() takes the bounds {', '.join(BOUNDS)}, not {', '.join(unknown)}")
    metadata = {"help": help, **bounds}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe_bounds(metadata: Any) -> str:
    """A field's declared range as text, e.g. "> 0, <= 1" ("" when it declares none)."""
    return ", ".join(f"{op} {metadata[key]}" for key, op in BOUNDS.items() if key in metadata)


def declared_bounds(cls: type, name: str) -> dict[str, Any]:
    """The range of field `name` declared in `cls` or any dataclass it derives from (a subclass that redeclares a
    field, e.g. to change its default, keeps the range of its base; its own bounds win where both declare one)."""
    bounds: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        field = getattr(klass, "__dataclass_fields__", {}).get(name)
        if field is not None:
            bounds.update({k: v for k, v in field.metadata.items() if k in BOUNDS})
    return bounds


def check_bounds(cfg: Any) -> None:
    """Check every field of a dataclass config against the range declared beside it in its metadata
    (`gt`, `ge`, `lt`, `le`; e.g. `field(default=1e-4, metadata={"help": "...", "gt": 0})`). None passes (an
    unset optional value). Raises ValueError naming the flag, the range and the value."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        m = declared_bounds(type(cfg), f.name)
        bounds = describe_bounds(m)
        if not bounds or value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        ok = (
            ("gt" not in m or value > m["gt"])
            and ("ge" not in m or value >= m["ge"])
            and ("lt" not in m or value < m["lt"])
            and ("le" not in m or value <= m["le"])
        )
        if not ok:
            raise ValueError(f"--{f.name} must be {bounds}, got {value}")


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a dict of plain YAML/JSON values (enums as values, paths as strings)."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    from lmlab.io import atomic_write

    path = Path(path)
    with atomic_write(path) as fh:
        yaml.safe_dump(config_to_dict(cfg), fh, sort_keys=False)
    return path
