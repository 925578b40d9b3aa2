"""The one command-line parser of all five lmlab console scripts.

A subcommand is a dataclass (typed fields declared with `lmlab.config.option(help, default, ge=...)`, checks in
`__post_init__`) and a function taking an instance of it. On the command line, in order of precedence (highest first):

    prog CMD [--key value | --flag | key=value ...] [--config NAME|PATH] [-m key=a,b ...] [--print_config] [--debug]

Usage errors (unknown key, wrong type, value out of range) print one line naming the flag and exit 2; errors
while running print one line and exit 1 (`--debug` re-raises to show the traceback).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib
import itertools
import sys
import types
import typing
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmlab.config import (
    CONFIG_SUFFIXES,
    check_bounds,
    config_to_dict,
    declared_bounds,
    describe_bounds,
    load_config_file,
)
from lmlab.errors import LmlabError

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off"}
NONE = {"none", "null", "~"}


class UsageError(Exception):
    """A bad command line: printed as one line, exit code 2."""


@dataclasses.dataclass
class Command:
    """A subcommand: its name, its config dataclass, and what runs it (a callable or "module:function")."""

    name: str
    config_cls: type
    run: Callable[[Any], Any] | str
    help: str = ""
    config_package: str | None = None
    aliases: dict[str, str] | None = None

    def resolve_run(self) -> Callable[[Any], Any]:
        if callable(self.run):
            return self.run
        module, _, func = self.run.partition(":")
        return getattr(importlib.import_module(module), func)


# ----------------------------------------------------------------------------------------------- type coercion


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "{" + ",".join(str(m.value) for m in tp) + "}"
    if typing.get_origin(tp) in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, flag: str) -> Any:
    """Convert `value` (a command-line string or a YAML/JSON value) to the annotated type `tp`.

    Raises UsageError naming `flag` and what is allowed.
    """
    bad = UsageError(f"{flag}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in NONE)):
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return coerce(value, arm, flag)
            except UsageError:
                continue
        raise bad
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or str(value) == str(choice):
                return choice
        raise UsageError(f"{flag}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else None
            value = parsed if isinstance(parsed, list) else [v for v in value.split(",") if v != ""]
        if not isinstance(value, list | tuple):
            value = [value]
        items = [coerce(v, inner, flag) for v in value]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad from None
        if not isinstance(value, dict):
            raise bad
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value in (member, member.value, member.name) or str(value) == str(member.value):
                return member
        raise UsageError(f"{flag}: must be one of {', '.join(str(m.value) for m in tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in TRUE | FALSE:
            return value.lower() in TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    raise bad from None
                if as_float.is_integer():
                    return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, dict | list):
            raise bad
        return str(value)
    if tp is Path:
        return Path(value)
    return value


# ----------------------------------------------------------------------------------------------- parsing


@dataclasses.dataclass
class ParsedArgs:
    overrides: dict[str, Any]
    config: str | None = None
    sweep: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    print_config: bool = False
    debug: bool = False
    help: bool = False


def _field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.init}


def _canonical(key: str, fields: dict[str, Any], aliases: dict[str, str]) -> str:
    key = key.replace("-", "_")
    key = aliases.get(key, key)
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"; did you mean --{close[0]}?" if close else f"; see --help for the {len(fields)} known keys"
        raise UsageError(f"unknown key {key!r}{hint}")
    return key


def _takes_list(tp: Any) -> bool:
    if _is_union(tp):
        return any(_takes_list(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _is_bool(tp: Any) -> bool:
    return tp is bool or (_is_union(tp) and bool in typing.get_args(tp))


def parse_argv(argv: Sequence[str], fields: dict[str, Any], aliases: dict[str, str]) -> ParsedArgs:
    """Split a subcommand's argv into overrides (raw values), a config source, sweeps and switches."""
    out = ParsedArgs(overrides={})
    args = list(argv)
    i = 0
    spelled: dict[str, str] = {}  # key -> how the command line spelled it (the flag or an alias)

    def put(raw: str, value: Any) -> None:
        raw = raw.replace("-", "_")
        key = _canonical(raw, fields, aliases)
        before = spelled.get(key)
        if before is not None and before != raw and str(out.overrides[key]) != str(value):
            raise UsageError(
                f"--{raw} {value} and --{before} {out.overrides[key]} set the same option ({key}); give one"
            )
        spelled[key] = raw
        out.overrides[key] = value

    def is_option(tok: str) -> bool:
        return tok.startswith("-") and not _looks_numeric(tok)

    while i < len(args):
        tok = args[i]
        if tok in ("-h", "--help"):
            out.help = True
            i += 1
        elif tok == "--print_config":
            out.print_config = True
            i += 1
        elif tok == "--debug":
            out.debug = True
            i += 1
        elif tok == "--config" or tok.startswith("--config="):
            if "=" in tok:
                out.config = tok.split("=", 1)[1]
                i += 1
            elif i + 1 < len(args):
                out.config, i = args[i + 1], i + 2
            else:
                raise UsageError("--config needs a name or a path")
        elif tok == "-m":
            i += 1
            if i >= len(args) or "=" not in args[i]:
                raise UsageError("-m needs at least one key=a,b sweep")
            while i < len(args) and "=" in args[i] and not is_option(args[i]):
                key, _, values = args[i].partition("=")
                out.sweep[_canonical(key, fields, aliases)] = values.split(",")
                i += 1
        elif tok.startswith("--"):
            raw, eq, inline = tok[2:].partition("=")
            key = _canonical(raw, fields, aliases)
            tp = fields[key]
            i += 1
            if eq:
                put(raw, inline)
            elif _takes_list(tp):
                values = []
                while i < len(args) and not is_option(args[i]) and "=" not in args[i]:
                    values.append(args[i])
                    i += 1
                if not values:
                    raise UsageError(f"--{key} needs a value ({_type_name(tp)})")
                put(raw, values[0] if len(values) == 1 else values)
            elif _is_bool(tp):
                if i < len(args) and args[i].lower() in TRUE | FALSE | NONE:
                    put(raw, args[i])
                    i += 1
                else:
                    put(raw, True)
            else:
                if i >= len(args):
                    raise UsageError(f"--{key} needs a value ({_type_name(tp)})")
                put(raw, args[i])
                i += 1
        elif "=" in tok and not tok.startswith("-"):
            raw, _, value = tok.partition("=")
            put(raw, value)
            i += 1
        else:
            raise UsageError(f"unexpected argument {tok!r}; give options as --key value or key=value")
    return out


def _looks_numeric(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def find_config(name_or_path: str, config_package: str | None) -> Path:
    """A config path: an existing file, or NAME(.yaml/.yml/.json) shipped in `config_package`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped: list[str] = []
    if config_package is not None:
        folder = resources.files(config_package)
        for suffix in ("", *CONFIG_SUFFIXES):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return Path(str(candidate))
        shipped = sorted(
            Path(p.name).stem for p in folder.iterdir() if Path(p.name).suffix in CONFIG_SUFFIXES
        )
    known = f"; shipped configs: {', '.join(shipped)}" if shipped else ""
    raise UsageError(f"--config {name_or_path}: no such file or shipped config{known}")


def build_config(command: Command, parsed: ParsedArgs, extra: dict[str, Any] | None = None) -> Any:
    """Defaults < config file < command line (< `extra`, used for sweep values); checked by the dataclass."""
    fields = _field_types(command.config_cls)
    aliases = command.aliases or {}
    values: dict[str, Any] = {}
    if parsed.config is not None:
        path = find_config(parsed.config, command.config_package)
        try:
            loaded = load_config_file(path)
        except LmlabError as err:
            raise UsageError(str(err)) from None
        for key, value in loaded.items():
            values[_canonical(str(key), fields, aliases)] = value
    values.update(parsed.overrides)
    values.update(extra or {})
    kwargs = {key: coerce(value, fields[key], f"--{key}") for key, value in values.items()}
    try:
        cfg = command.config_cls(**kwargs)
        check_bounds(cfg)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    return cfg


def expand_sweep(sweep: dict[str, list[str]]) -> list[dict[str, str]]:
    """The cartesian product of `-m key=a,b key2=x,y` as a list of {key: value} (one entry when no sweep)."""
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(sweep[k] for k in keys))]


# ----------------------------------------------------------------------------------------------- help and main


def command_help(prog: str, command: Command) -> str:
    lines = [f"usage: {prog} {command.name} [--key value ...] [key=value ...] [--config NAME|PATH]"]
    lines.append("       [-m key=a,b ...] [--print_config] [--debug]")
    if command.help:
        lines += ["", command.help]
    lines += ["", "options (default in brackets):"]
    for f in dataclasses.fields(command.config_cls):
        if not f.init:
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )
        tp = _field_types(command.config_cls)[f.name]
        text = f.metadata.get("help", "")
        bounds = describe_bounds(declared_bounds(command.config_cls, f.name))
        if bounds:
            text = f"{text} ({bounds})".lstrip()
        lines.append(f"  --{f.name} {_type_name(tp)} [{default}]  {text}".rstrip())
    return "\n".join(lines)


def main_help(prog: str, commands: Sequence[Command], description: str) -> str:
    lines = [f"usage: {prog} COMMAND [options]   ({prog} COMMAND --help for its options)"]
    if description:
        lines += ["", description]
    lines += ["", "commands:"]
    width = max(len(c.name) for c in commands)
    lines += [f"  {c.name.ljust(width)}  {c.help.splitlines()[0] if c.help else ''}" for c in commands]
    return "\n".join(lines)


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def _set_output_dir(cfg: Any, index: int) -> Any:
    if not hasattr(cfg, "output_dir"):
        return cfg
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / str(index)))


def run_cli(
    prog: str, commands: Sequence[Command], argv: Sequence[str] | None = None, description: str = ""
) -> int:
    """Parse `argv` (default sys.argv[1:]) for one of `commands` and run it. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in commands}
    if not argv or argv[0] in ("-h", "--help"):
        print(main_help(prog, commands, description))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in by_name:
        close = difflib.get_close_matches(name, list(by_name), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return _fail(prog, f"unknown command {name!r}{hint} (choose from {', '.join(by_name)})", 2)
    command = by_name[name]
    debug = "--debug" in rest
    try:
        fields = _field_types(command.config_cls)
        parsed = parse_argv(rest, fields, command.aliases or {})
        if parsed.help:
            print(command_help(prog, command))
            return 0
        runs = expand_sweep(parsed.sweep)
        configs = [build_config(command, parsed, extra) for extra in runs]
        if len(configs) > 1:
            configs = [_set_output_dir(cfg, i) for i, cfg in enumerate(configs)]
    except UsageError as err:
        if debug:
            raise
        return _fail(f"{prog} {name}", str(err), 2)
    if parsed.print_config:
        for cfg in configs:
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
        return 0
    try:
        run = command.resolve_run()
        results = []
        for extra, cfg in zip(runs, configs, strict=True):
            if len(configs) > 1:
                print(f"[{prog} {name}] sweep run {len(results)}: {extra}", file=sys.stderr)
            results.append(run(cfg))
        if len(configs) > 1:
            _write_sweep_summary(configs, runs, results)
    except KeyboardInterrupt:
        if debug:
            raise
        return _fail(
            f"{prog} {name}",
            "interrupted; run the same command again to resume from the last checkpoint",
            130,
        )
    except Exception as err:  # every run-time failure becomes one line; --debug shows the traceback
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if not isinstance(err, LmlabError):
            message = f"{type(err).__name__}: {message} (rerun with --debug for the traceback)"
        return _fail(f"{prog} {name}", message, 1)
    return 0


def _write_sweep_summary(configs: list[Any], runs: list[dict[str, str]], results: list[Any]) -> None:
    if not hasattr(configs[0], "output_dir"):
        return
    from lmlab.io import write_results

    rows = []
    for cfg, extra, result in zip(configs, runs, results, strict=True):
        row = {"output_dir": cfg.output_dir, **extra}
        if hasattr(cfg, "seed"):
            row.setdefault("seed", cfg.seed)
        if isinstance(result, dict):
            row.update({k: v for k, v in result.items() if isinstance(v, int | float | str | bool)})
        rows.append(row)
    write_results(rows, Path(configs[0].output_dir).parent, name="sweep")
