"""lmlab.cli: precedence, types, sweeps, errors (exit 2 for usage, 1 for run-time), help."""

import dataclasses
import enum
import json
from pathlib import Path
from typing import Literal

import pytest
from lmlab.cli import Command, UsageError, coerce, expand_sweep, find_config, run_cli
from lmlab.errors import LmlabError


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclasses.dataclass
class Cfg:
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "learning rate", "gt": 0})
    prob: float = dataclasses.field(default=0.15, metadata={"help": "a probability", "ge": 0, "le": 1})
    steps: int = 10
    name: str = "x"
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    mode: Mode = Mode.FAST
    layers: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    limit: int | None = None
    output_dir: str = "out"
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")


def make(calls, fail=None):
    def run(cfg):
        calls.append(cfg)
        if fail is not None:
            raise fail
        return {"score": cfg.lr * 10}

    return [Command("train", Cfg, run, help="train a thing", aliases={"learning_rate": "lr"})]


def test_all_types_parse_and_flags_beat_defaults():
    calls = []
    argv = [
        "train",
        "--lr",
        "0.5",
        "steps=3",
        "--name",
        "n1",
        "--flag",
        "--kind",
        "b",
        "--mode",
        "slow",
        "--layers",
        "4",
        "5",
        "6",
        "--limit",
        "7",
    ]
    assert run_cli("prog", make(calls), argv) == 0
    assert calls[0] == Cfg(
        lr=0.5, steps=3, name="n1", flag=True, kind="b", mode=Mode.SLOW, layers=[4, 5, 6], limit=7
    )


def test_bool_and_optional_values_and_comma_lists():
    calls = []
    assert (
        run_cli(
            "prog", make(calls), ["train", "--flag", "false", "--limit", "none", "--layers", "7,8", "--lr=2"]
        )
        == 0
    )
    assert (
        calls[0].flag is False and calls[0].limit is None and calls[0].layers == [7, 8] and calls[0].lr == 2.0
    )


def test_precedence_command_line_over_file_over_defaults(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.25\nsteps: 4\nlearning_rate: 0.3\n")
    calls = []
    assert run_cli("prog", make(calls), ["train", "--config", str(cfg_file), "--steps", "9"]) == 0
    assert calls[0].lr == 0.3  # alias in the file maps to lr; later key wins
    assert calls[0].steps == 9 and calls[0].name == "x"


def test_json_config_as_the_reference_wrote(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"learning_rate": 0.01, "steps": 2}))
    calls = []
    assert run_cli("prog", make(calls), ["train", "--config", str(path)]) == 0
    assert calls[0].lr == 0.01 and calls[0].steps == 2


def test_shipped_config_by_name(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg_cfgs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "small.yaml").write_text("steps: 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_config("small", "fakepkg_cfgs").name == "small.yaml"
    with pytest.raises(UsageError, match="shipped configs: small"):
        find_config("big", "fakepkg_cfgs")
    calls = []
    cmd = [Command("train", Cfg, calls.append, config_package="fakepkg_cfgs")]
    assert run_cli("prog", cmd, ["train", "--config", "small"]) == 0
    assert calls[0].steps == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--bogus", "1"], "unknown key 'bogus'"),
        (["train", "--stepz", "1"], "did you mean --steps"),
        (["train", "--steps", "many"], "--steps: expected int, got 'many'"),
        (["train", "--steps", "0"], "--steps must be at least 1"),
        (["train", "--kind", "c"], "--kind: must be one of a, b"),
        (["train", "--mode", "medium"], "--mode: must be one of fast, slow"),
        (["train", "stray"], "unexpected argument 'stray'"),
        (["train", "--config", "/no/such.yaml"], "no such file"),
        (["train", "--lr"], "--lr needs a value"),
        (["train", "-m"], "-m needs at least one"),
        (["trian"], "did you mean 'train'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert run_cli("prog", make([]), argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_runtime_errors_exit_1_with_one_line_and_debug_reraises(capsys):
    assert run_cli("prog", make([], fail=LmlabError("data.txt is empty; give a file")), ["train"]) == 1
    err = capsys.readouterr().err
    assert err == "prog train: error: data.txt is empty; give a file\n"
    assert run_cli("prog", make([], fail=RuntimeError("boom")), ["train"]) == 1
    assert "RuntimeError: boom (rerun with --debug" in capsys.readouterr().err
    with pytest.raises(RuntimeError):
        run_cli("prog", make([], fail=RuntimeError("boom")), ["train", "--debug"])


def test_keyboard_interrupt_says_how_to_resume(capsys):
    assert run_cli("prog", make([], fail=KeyboardInterrupt()), ["train"]) == 130
    assert "resume" in capsys.readouterr().err


def test_sweep_is_a_cartesian_product_with_numbered_run_dirs(tmp_path):
    calls = []
    argv = ["train", "--output_dir", str(tmp_path), "-m", "lr=0.1,0.2", "kind=a,b", "--steps", "2"]
    assert run_cli("prog", make(calls), argv) == 0
    assert [(c.lr, c.kind) for c in calls] == [(0.1, "a"), (0.1, "b"), (0.2, "a"), (0.2, "b")]
    assert [Path(c.output_dir).name for c in calls] == ["0", "1", "2", "3"]
    assert all(c.steps == 2 for c in calls)
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["score"] for r in rows] == pytest.approx([1.0, 1.0, 2.0, 2.0])
    assert [(r["lr"], r["kind"], r["seed"]) for r in rows] == [
        ("0.1", "a", 0),
        ("0.1", "b", 0),
        ("0.2", "a", 0),
        ("0.2", "b", 0),
    ]
    assert expand_sweep({}) == [{}]
    # seeds are a swept value like any other: one row (and one folder) per seed, none overwritten
    assert run_cli("prog", make([]), ["train", "--output_dir", str(tmp_path / "s"), "-m", "seed=1,2"]) == 0
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [(r["seed"], Path(r["output_dir"]).name) for r in rows] == [("1", "0"), ("2", "1")]


def test_print_config_and_help(capsys):
    assert run_cli("prog", make([]), ["train", "--lr", "0.5", "--print_config"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out
    assert run_cli("prog", make([]), ["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--lr float [0.001]  learning rate" in out and "--limit int | None [None]" in out
    assert run_cli("prog", make([]), ["--help"]) == 0
    assert "train  train a thing" in capsys.readouterr().out
    assert run_cli("prog", make([]), []) == 2


def test_run_as_module_path_string():
    cmd = [Command("fmt", Cfg, "json:dumps")]  # resolved lazily; json.dumps(cfg) fails -> exit 1
    assert run_cli("prog", cmd, ["fmt"]) == 1


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("3", int, 3),
        ("1e3", int, 1000),
        (2.0, int, 2),
        ("yes", bool, True),
        (0, bool, False),
        ("[1, 2]", list[int], [1, 2]),
        ("1,2", tuple[int, ...], (1, 2)),
        (5, list[int], [5]),
        ("{a: 1}", dict, {"a": 1}),
        ("x", Path, Path("x")),
        ("null", int | None, None),
        ("4", int | str, 4),
        ("auto", int | str, "auto"),
    ],
)
def test_coerce(value, tp, expected):
    assert coerce(value, tp, "--k") == expected


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        (True, int),
        ("1.5", int),
        ("maybe", bool),
        (True, float),
        ([1], str),
        ("x", float),
        ("[", dict),
        (3, dict),
    ],
)
def test_coerce_rejects(value, tp):
    with pytest.raises(UsageError, match="--k"):
        coerce(value, tp, "--k")


@dataclasses.dataclass
class DataCfg:
    train_dir: str = "envs"
    column: str = "text"


def _load(cfg):
    from lmlab.data import load_corpus, load_environments

    envs = load_environments(cfg.train_dir)
    for path in sorted(Path(cfg.train_dir).iterdir()):
        load_corpus(path, text_column=cfg.column)
    return {"n": len(envs)}


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (lambda d: None, [], "not a folder"),
        (
            lambda d: (d.mkdir(), (d / "a.txt").write_text("x\n"), (d / "b.txt").write_text("")),
            [],
            "b.txt is empty",
        ),
        (lambda d: (d.mkdir(), (d / "a.jsonl").write_text('{"body": "x"}\n')), [], "has no column 'text'"),
    ],
)
def test_bad_data_through_the_cli_is_one_line_exit_1(tmp_path, setup, extra, message, capsys):
    folder = tmp_path / "envs"
    setup(folder)
    code = run_cli("prog", [Command("train", DataCfg, _load)], ["train", "--train_dir", str(folder), *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-0.5"], "--lr must be > 0, got -0.5"),
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--prob", "1.5"], "--prob must be >= 0, <= 1, got 1.5"),
        (["--learning_rate", "-1"], "--lr must be > 0, got -1.0"),
    ],
)
def test_declared_ranges_are_usage_errors(argv, message, capsys):
    calls = []
    assert run_cli("prog", make(calls), ["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"prog train: error: {message}" and calls == []
    assert run_cli("prog", make(calls), ["train", "--prob", "1", "--lr", "2"]) == 0 and calls[0].prob == 1.0


def test_help_shows_declared_ranges(capsys):
    run_cli("prog", make([]), ["train", "--help"])
    assert "a probability (>= 0, <= 1)" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"\x80\x81\xfe binary \x00", b"\xff\xd8\xff\xe0 jpeg"])
def test_binary_config_file_is_one_line_usage_error(tmp_path, content, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    assert run_cli("prog", make([]), ["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not UTF-8" in err and "Traceback" not in err


def test_an_alias_and_its_flag_must_agree(capsys):
    calls = []
    assert run_cli("prog", make(calls), ["train", "--learning_rate", "0.1", "--lr", "0.2"]) == 2
    assert "--lr 0.2 and --learning_rate 0.1 set the same option (lr); give one" in capsys.readouterr().err
    assert (
        run_cli("prog", make(calls), ["train", "--learning_rate", "0.1", "lr=0.1"]) == 0
        and calls[0].lr == 0.1
    )
    assert run_cli("prog", make(calls), ["train", "--lr", "0.1", "--lr", "0.3"]) == 0 and calls[1].lr == 0.3


def test_a_redeclared_field_keeps_the_range_of_its_base(capsys):
    @dataclasses.dataclass
    class Sub(Cfg):
        lr: float = 0.5  # a new default, no metadata

    commands = [Command("train", Sub, lambda cfg: None)]
    assert run_cli("prog", commands, ["train", "--lr", "-1"]) == 2
    assert "--lr must be > 0, got -1.0" in capsys.readouterr().err
    run_cli("prog", commands, ["train", "--help"])
    assert "--lr float [0.5]" in (out := capsys.readouterr().out) and "(> 0)" in out


def test_option_declares_help_range_and_copies_list_defaults(capsys):
    from lmlab.config import check_bounds, option

    @dataclasses.dataclass
    class Cfg:
        lr: float = option("learning rate", 1e-3, gt=0)
        tags: list[str] = option("names", ["a"])

    one, two = Cfg(), Cfg()
    one.tags.append("b")
    assert two.tags == ["a"]  # each instance has its own list
    field = Cfg.__dataclass_fields__["lr"]
    assert dict(field.metadata) == {"help": "learning rate", "gt": 0}
    with pytest.raises(ValueError, match=r"--lr must be > 0, got 0"):
        check_bounds(Cfg(lr=0))
    with pytest.raises(TypeError, match="not minimum"):
        option("x", 1, minimum=0)
    assert run_cli("prog", [Command("go", Cfg, lambda cfg: None, "go")], ["go", "--help"]) == 0
    assert "learning rate (> 0)" in capsys.readouterr().out
