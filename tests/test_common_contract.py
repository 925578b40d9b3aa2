"""Issue 14, one house: every training command of the five console scripts shares one contract.

For each training command (headless-lm gpt/mlm/ft-gpt/glue, invariant-lm train, camels qa-pretrain/meta-train,
diito train, mode-connectivity train/curve/glue-train), on tiny inputs built in a temporary folder:

1. `--help` lists every common flag (or an alias of it), and `--print_config` with each common flag set to a
   non-default value shows that value in the resolved config.
2. after a tiny run (2 optimizer steps, 2 micro-batches each, `--log_every_n_steps` above the step count) the
   output directory holds `config.yaml`, `metrics.jsonl` (at least one row, no (step, key) twice),
   `checkpoints/last.ckpt` (no checkpoint file stored twice), `model/` (loads with transformers' AutoConfig and
   AutoModel), `results.json`, `report.md` and `DONE` (written last).
3. at the first training step every module of the LightningModule is in train mode, except those under a name in
   its `eval_modules` (which are in eval mode); observed by a probe callback appended through
   `lmlab.training.build_trainer`.
4. the flags take effect in the run: `--accumulate_grad_batches 2` (Lightning's accumulation, or two batches per
   optimizer step under manual optimisation), `--max_steps 2` (ends at global step 2), `--val_check_interval`,
   `--log_every_n_steps` and `--seed` are what the Trainer and `ExactResume` use.
5. `--overwrite` means one thing: the same command again into a finished run folder is refused (one line naming
   --overwrite, nothing written); with `--overwrite true` it trains afresh from step 0 and nothing of the old run
   (its model/, metrics rows, last.ckpt) remains.

Each command runs once per module (cached); the checks read that one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import shutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import yaml

COMMON = (
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "accumulate_grad_batches",
    "attn_implementation",
    "max_steps",
    "seed",
    "output_dir",
    "log_every_n_steps",
    "val_check_interval",
    "resume",
)

# non-default values for --print_config, one flag at a time (output_dir is filled in per test)
PRINT_VALUES = {
    "devices": "2",
    "num_nodes": "2",
    "strategy": "ddp",
    "precision": "bf16-mixed",
    "accumulate_grad_batches": "2",
    "attn_implementation": "eager",
    "max_steps": "3",
    "seed": "7",
    "log_every_n_steps": "3",
    "val_check_interval": "1",
    "resume": "never",
}

STEPS, ACCUMULATE, SEED, LOG_EVERY, VAL_EVERY = 2, 2, 7, 50, 2

# the common flags of the tiny run (output_dir added per run); only those a command accepts are passed, so that
# a rejected flag shows up in the flag checks and does not hide the layout and mode checks
RUN_FLAGS = {
    "devices": "1",
    "num_nodes": "1",
    "strategy": "auto",
    "precision": "32-true",
    "accumulate_grad_batches": str(ACCUMULATE),
    "attn_implementation": "eager",
    "max_steps": str(STEPS),
    "seed": str(SEED),
    "log_every_n_steps": str(LOG_EVERY),
    "val_check_interval": str(VAL_EVERY),
    "resume": "auto",
}

PACKAGES = ("headless_lm", "invariant_lm", "camels", "diito", "mode_connectivity")


# ------------------------------------------------------------------------------------------------ commands


def _commands(package: str) -> dict[str, Any]:
    cli = importlib.import_module(f"{package}.cli")
    commands = cli.commands() if hasattr(cli, "commands") else cli.COMMANDS
    return {c.name: c for c in commands}


def _main(package: str) -> Callable[[list[str]], int]:
    return importlib.import_module(f"{package}.cli").main


def _fields(command) -> dict[str, Any]:
    hints = typing.get_type_hints(command.config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(command.config_cls) if f.init}


def _spelling(command, flag: str) -> str | None:
    """How `command` accepts the common flag: its own name, an alias of it, or None (not accepted)."""
    if flag in _fields(command):
        return flag
    for alias, target in (command.aliases or {}).items():
        if target == flag:
            return alias
    return None


def _canonical(command, flag: str) -> str:
    """The config key a common flag lands in (the flag itself, or the field it is an alias of)."""
    return (command.aliases or {}).get(flag, flag)


def _call(package: str, argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _main(package)(argv)
        except SystemExit as exc:  # a command should return its code, but do not let one end the session
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


# ------------------------------------------------------------------------------------------------ tiny assets


class Assets:
    """Tiny inputs of every package, built once per module on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._built:
            folder = self.root / name
            folder.mkdir(parents=True, exist_ok=True)
            self._built[name] = getattr(self, f"_build_{name}")(folder)
        return self._built[name]

    @staticmethod
    def _build_headless(d: Path) -> dict[str, Path]:
        import datasets
        import torch
        from lmlab.data import sample_path
        from lmlab.testing import save_tiny_model, tiny_tokenizer_dir

        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, 8, (64,), generator=g)
        rows = [[20 + (int(s) + t) % 8 for t in range(17)] for s in starts]
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": rows})}).save_to_disk(
            str(d / "clm.hf")
        )
        rows = [[20 + (int(s) + t) % 8 for t in range(32)] for s in starts[:32]]
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"packed": rows})}).save_to_disk(
            str(d / "mlm.hf")
        )
        (d / "glue" / "MRPC").mkdir(parents=True)
        for split in ("train", "dev"):
            (d / "glue" / "MRPC" / f"{split}.tsv").write_text(
                sample_path(f"glue/mrpc/{split}.tsv").read_text()
            )
        return {
            "clm": d / "clm.hf",
            "mlm": d / "mlm.hf",
            "roberta_tok": Path(tiny_tokenizer_dir("roberta")),
            "bert": save_tiny_model(d / "bert", "bert", "base"),
            "glue": d / "glue",
        }

    @staticmethod
    def _build_invariant(d: Path) -> dict[str, Path]:
        from lmlab.testing import save_tiny_model, write_environments, write_text_corpus

        save_tiny_model(d / "model", "roberta")
        write_environments(d / "envs", ("b_env", "a_env"), n=24)
        write_text_corpus(d, "valid.txt", n=8)
        return {"model": d / "model", "envs": d / "envs", "valid": d / "valid.txt"}

    @staticmethod
    def _build_camels(d: Path) -> dict[str, Path]:
        from camels.data import make_synthetic
        from lmlab.testing import save_tiny_model

        data = make_synthetic(d / "data", seed=0, n_qa=16, n_meta=8, n_test=4, n_loc=6)
        base = save_tiny_model(d / "base", "gpt2", "clm", hidden=32, layers=2, heads=2, positions=256)
        return {"data": Path(data), "base": Path(base)}

    @staticmethod
    def _build_diito(d: Path) -> dict[str, Path]:
        from lmlab.testing import save_tiny_model, write_text_corpus

        save_tiny_model(d / "teacher", "bert", "mlm", layers=4, hidden=32, heads=2)
        corpus = write_text_corpus(d, n=60)
        steps = (
            ["binarize", "--input", str(corpus), "--tokenizer_name", str(d / "teacher"), "--dump_file", str(d / "bin")],
            ["token-counts", "--data_file", str(d / "bin.train.teacher.npz"), "--token_counts_dump", str(d / "counts.npy")],
            ["extract", "--teacher_name", str(d / "teacher"), "--dump_checkpoint", str(d / "student"), "--layers", "0", "2"],
        )  # fmt: skip
        for argv in steps:
            code, _, err = _call("diito", argv)
            assert code == 0, f"diito {argv[0]} (asset) exited {code}: {_last_line(err)}"
        mapping = {
            "interchange_variable_mappings": [
                {
                    "teacher_variable_names": ["$L:[1:3]$H:[0:2]$[0:16]"],
                    "student_variable_names": ["$L:0$H:[0:2]$[0:16]"],
                }
            ]
        }
        (d / "map.nm").write_text(json.dumps(mapping))
        return {
            "teacher": d / "teacher",
            "student": d / "student",
            "data": d / "bin.train.teacher.npz",
            "counts": d / "counts.npy",
            "map": d / "map.nm",
        }

    @staticmethod
    def _build_mode_connectivity(d: Path) -> dict[str, Path]:
        from mode_connectivity.make_tiny import (
            build_roberta,
            build_t5,
            build_tokenizer,
            synthetic_tasks,
            write_glue,
        )

        tok = build_tokenizer(d / "t5")
        build_t5(d / "t5", tok, d_model=32, num_layers=1, num_heads=2, d_ff=32, seed=0)
        tasks = synthetic_tasks(d / "data", n_train=16, n_eval=4, seed=0)
        roberta = build_roberta(d / "roberta", seed=0, hidden=32, layers=1, heads=2)
        glue = write_glue(d / "glue", n_train=16, n_eval=4, seed=0)
        return {
            "t5": d / "t5",
            "task": Path(tasks["tiny-nli"]),
            "roberta": Path(roberta),
            "glue_mnli": Path(glue["mnli"]),
        }


# ------------------------------------------------------------------------------------------------ recipes


@dataclasses.dataclass
class Recipe:
    """A training command, the tiny arguments it needs besides the common flags (`args(assets, out)`), and
    the package's own spelling of an essential common flag it does not accept (`fallback[flag](out)`)."""

    package: str
    command: str
    args: Callable[[Assets, Path], list[str]]
    fallback: dict[str, Callable[[Path], list[str]]] = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.package.replace('_', '-')} {self.command}"


def _headless_pretrain(kind: str) -> Callable[[Assets, Path], list[str]]:
    def args(assets: Assets, out: Path) -> list[str]:
        a = assets.get("headless")
        common = ["--gpu_bs", "4", "--global_bs", "8", "--device", "cpu", "--warmup_steps", "1",
                  "--logger", "none", "--progress_bar", "false", "--model_max_seq_len", "32",
                  "--learning_rate", "1e-3"]  # fmt: skip
        if kind == "gpt":
            return ["--dataset", str(a["clm"]), "--hf_path", "tiny-gpt", *common]
        return ["--dataset", str(a["mlm"]), "--hf_tokenizer", str(a["roberta_tok"]), "--hf_path", "tiny-bert",
                "--max_seq_len", "16", *common]  # fmt: skip

    return args


def _headless_ft_gpt(assets: Assets, out: Path) -> list[str]:
    gpt = run_of(RECIPES["headless-lm gpt"], assets)
    ckpt = gpt.output_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file(), (
        f"ft-gpt needs the headless-lm gpt run's checkpoint, which is missing ({gpt.summary()})"
    )
    return ["--ckpt_path", str(ckpt), *_headless_pretrain("gpt")(assets, out)]


def _headless_glue(assets: Assets, out: Path) -> list[str]:
    a = assets.get("headless")
    return ["--model", str(a["bert"]), "--tasks", "mrpc", "--seeds", "0", "--epochs", "1", "--batch_size", "4",
            "--max_train_samples", "8", "--max_seq_len", "32", "--data_dir", str(a["glue"]),
            "--device", "cpu"]  # fmt: skip


def _invariant_train(assets: Assets, out: Path) -> list[str]:
    a = assets.get("invariant")
    return ["--model_name_or_path", str(a["model"]), "--train_file", str(a["envs"]),
            "--validation_file", str(a["valid"]), "--do_train", "--do_eval", "--learning_rate", "1e-3",
            "--max_seq_length", "32", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--progress_bar", "false", "--logger", "none", "--device", "cpu"]  # fmt: skip


def _camels_qa(assets: Assets, out: Path) -> list[str]:
    a = assets.get("camels")
    return ["--dataset", "synthetic", "--model", str(a["base"]), "--train_path", str(a["data"] / "qa_train.csv"),
            "--val_path", str(a["data"] / "qa_val.csv"), "--lt_batch_size", "4", "--val_steps", "100",
            "--val_max_pairs", "4", "--lr", "1e-3", "--logger", "none", "--progress_bar", "false"]  # fmt: skip


def _camels_meta(assets: Assets, out: Path) -> list[str]:
    a = assets.get("camels")
    d = a["data"]
    return ["--dataset", "synthetic", "--base_model", str(a["base"]), "--pretrained_model", str(a["base"]),
            "--train_path", str(d / "train.csv"), "--val_path", str(d / "val.csv"),
            "--loc_train_path", str(d / "owt_train.csv"), "--loc_val_path", str(d / "owt_val.csv"),
            "--update_batch_size", "2", "--reset_base_freq", "4", "--max_text_len", "64", "--inner_lr", "0.05",
            "--outer_lr", "1e-3", "--val_steps", "100", "--val_max_batches", "1", "--logger", "none",
            "--progress_bar", "false"]  # fmt: skip


def _diito_train(assets: Assets, out: Path) -> list[str]:
    a = assets.get("diito")
    return ["--teacher_name", str(a["teacher"]), "--student_pretrained_weights", str(a["student"]),
            "--data_file", str(a["data"]), "--token_counts", str(a["counts"]), "--neuron_mapping", str(a["map"]),
            "--mlm", "--alpha_ce", "0.25", "--alpha_mlm", "0.25", "--alpha_cos", "0.25", "--alpha_clm", "0",
            "--alpha_causal_ce", "0.25", "--alpha_causal_cos", "0.1", "--batch_size", "4",
            "--learning_rate", "2e-3", "--progress_bar", "false", "--logger", "none", "--device", "cpu"]  # fmt: skip


MC_TINY = ["--max_input_length", "48", "--max_output_length", "8", "--predict_batch_size", "16",
           "--adapter_size", "4", "--eval_mode", "rank", "--progress_bar", "false", "--logger", "none",
           "--device", "cpu"]  # fmt: skip


def _mc_train(assets: Assets, out: Path) -> list[str]:
    a = assets.get("mode_connectivity")
    return ["--task_dir", str(a["task"]), "--model", str(a["t5"]), "--tune_method", "adapter",
            "--learning_rate_list", "1e-2", "--bsz_list", "4", "--valid_interval", "100", "--output_interval", "1",
            *MC_TINY]  # fmt: skip


def _mc_endpoint(assets: Assets) -> Path:
    train = run_of(RECIPES["mode-connectivity train"], assets)
    found = sorted(train.output_dir.rglob("checkpoint@*"))
    assert found, f"curve needs a mode-connectivity train checkpoint, none found ({train.summary()})"
    return found[-1]


def _mc_curve(assets: Assets, out: Path) -> list[str]:
    a = assets.get("mode_connectivity")
    end = _mc_endpoint(assets)
    return ["--task_dir", str(a["task"]), "--model", str(a["t5"]), "--tune_method", "adapter",
            "--load_stage1_pet_path_list", str(end), str(end), "--bend_num", "1", "--bsz_list", "4",
            "--valid_interval", "100", "--valid_t", "0.5", "--itpl_points", "2", "--learning_rate_list", "1e-2",
            *MC_TINY]  # fmt: skip


def _mc_layer_mix(assets: Assets, out: Path) -> list[str]:
    a = assets.get("mode_connectivity")
    end = _mc_endpoint(assets)
    return ["--task_dir", str(a["task"]), "--model", str(a["t5"]), "--tune_method", "adapter",
            "--load_stage1_pet_path_list", str(end), str(end), "--layer_filter", "layer", "--bsz", "4",
            *MC_TINY]  # fmt: skip


def _mc_glue_train(assets: Assets, out: Path) -> list[str]:
    a = assets.get("mode_connectivity")
    return ["--task_name", "mnli", "--data_dir", str(a["glue_mnli"]), "--model_name_or_path", str(a["roberta"]),
            "--delta_type", "adapter", "--bottleneck_dim", "4", "--learning_rate", "3e-3", "--eval_steps", "100",
            "--save_steps", "100", "--per_device_train_batch_size", "4", "--progress_bar", "false",
            "--logger", "none", "--device", "cpu"]  # fmt: skip


RECIPES = {
    r.id: r
    for r in (
        Recipe("headless_lm", "gpt", _headless_pretrain("gpt")),
        Recipe("headless_lm", "mlm", _headless_pretrain("mlm")),
        Recipe("headless_lm", "ft-gpt", _headless_ft_gpt),
        Recipe(
            "headless_lm",
            "glue",
            _headless_glue,
            {"output_dir": lambda out: ["--output", str(out / "results.json")]},
        ),
        Recipe("invariant_lm", "train", _invariant_train),
        Recipe("camels", "qa-pretrain", _camels_qa),
        Recipe("camels", "meta-train", _camels_meta),
        Recipe("diito", "train", _diito_train),
        Recipe("mode_connectivity", "train", _mc_train),
        Recipe("mode_connectivity", "curve", _mc_curve),
        Recipe("mode_connectivity", "glue-train", _mc_glue_train),
        # not named in issue 14, but it trains through lmlab.training.build_trainer (found by the walk below)
        Recipe("mode_connectivity", "layer-mix", _mc_layer_mix),
    )
}
IDS = list(RECIPES)


def test_every_training_command_has_a_recipe():
    """Walk every console script's commands: one whose config carries the common trainer options (inherits
    lmlab.training.TrainerOptions or has max_steps) is a training command, and this file must run it."""
    from lmlab.training import TrainerOptions

    found = set()
    for package in PACKAGES:
        for name, command in _commands(package).items():
            if issubclass(command.config_cls, TrainerOptions) or "max_steps" in _fields(command):
                found.add(f"{package.replace('_', '-')} {name}")
    assert found <= set(RECIPES), (
        f"training commands without a contract recipe: {sorted(found - set(RECIPES))}"
    )


# ------------------------------------------------------------------------------------------------ the probe


class ModeProbe(pl.Callback):
    """Records, at the first training batch of a fit, the mode of every module and what the Trainer uses; counts
    the training batches and the final global step."""

    def __init__(self) -> None:
        self.modes: dict[str, bool] | None = None
        self.eval_modules: list[str] = []
        self.automatic_optimization = True
        self.trainer_values: dict[str, Any] = {}
        self.batches = 0
        self.global_step: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1
        if self.modes is not None:
            return
        self.modes = {name: module.training for name, module in pl_module.named_modules()}
        self.modes.update(_unregistered_modes(pl_module))
        self.eval_modules = list(getattr(pl_module, "eval_modules", ()) or ())
        self.automatic_optimization = bool(pl_module.automatic_optimization)
        seeds = [cb.seed for cb in trainer.callbacks if type(cb).__name__ == "ExactResume"]
        self.trainer_values = {
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "max_steps": trainer.max_steps,
            "log_every_n_steps": trainer.log_every_n_steps,
            "val_check_interval": trainer.val_check_interval,
            "seed": seeds[0] if seeds else None,
        }

    def on_train_end(self, trainer, pl_module) -> None:
        self.global_step = trainer.global_step


UNREGISTERED = " (unregistered)"


def _unregistered_modes(pl_module) -> dict[str, bool]:
    """Modes of the torch modules the LightningModule holds outside its module tree (an attribute set through
    `__dict__`, a list or dict of models): TrainMode reaches them only through `eval_modules`."""
    import torch

    registered = {id(m) for m in pl_module.modules()}
    found: dict[str, bool] = {}
    for attr, value in vars(pl_module).items():
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list | tuple)
            else None
        )
        candidates = [(attr, value)] if items is None else [(f"{attr}[{k!r}]", v) for k, v in items]
        for name, obj in candidates:
            if isinstance(obj, torch.nn.Module) and id(obj) not in registered:
                for sub, module in obj.named_modules():
                    found[f"{name}{'.' + sub if sub else ''}{UNREGISTERED}"] = module.training
    return found


class ForwardProbe:
    """For commands that train without Lightning: the modes of the first module called with gradients enabled
    and trainable parameters (the outermost call of the first training forward)."""

    def __init__(self) -> None:
        self.modes: dict[str, bool] | None = None
        self.direct_fits = 0  # Lightning fits of a Trainer not built by lmlab.training.build_trainer

    def __call__(self, module, args) -> None:
        import torch

        if (
            self.modes is None
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in module.parameters())
        ):
            self.modes = {name: m.training for name, m in module.named_modules()}


_ORIGINAL_BUILD_TRAINER: Callable[..., Any] | None = None
_PROBES: list[ModeProbe] = []  # the probes of the run in progress


def _probing_build_trainer(opts, output_dir=None, callbacks=(), **kwargs):
    """`lmlab.training.build_trainer` with a `ModeProbe` appended (bound into the package modules during a run;
    a module that keeps it afterwards still gets the original behaviour plus a harmless probe)."""
    probe = ModeProbe()
    _PROBES.append(probe)
    return _ORIGINAL_BUILD_TRAINER(opts, output_dir, [*callbacks, probe], **kwargs)


@contextlib.contextmanager
def probing():
    global _ORIGINAL_BUILD_TRAINER
    import lmlab.training

    if _ORIGINAL_BUILD_TRAINER is None:
        _ORIGINAL_BUILD_TRAINER = lmlab.training.build_trainer
    _PROBES.clear()
    import torch

    forward = ForwardProbe()
    original_fit = pl.Trainer.fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmlab.training, "build_trainer", _probing_build_trainer)
        # modules that did `from lmlab.training import build_trainer` at import time hold their own name
        bound = [m for n, m in list(sys.modules.items()) if n.split(".")[0] in PACKAGES]
        for module in bound:
            if getattr(module, "build_trainer", None) is _ORIGINAL_BUILD_TRAINER:
                mp.setattr(module, "build_trainer", _probing_build_trainer)

        def fit(trainer, *args, **kwargs):
            if not any(isinstance(cb, ModeProbe) for cb in trainer.callbacks):
                forward.direct_fits += 1
            return original_fit(trainer, *args, **kwargs)

        mp.setattr(pl.Trainer, "fit", fit)

        handle = torch.nn.modules.module.register_module_forward_pre_hook(forward)
        try:
            yield _PROBES, forward
        finally:
            handle.remove()


# ------------------------------------------------------------------------------------------------ one run each


@dataclasses.dataclass
class Run:
    recipe: Recipe
    output_dir: Path
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    probes: list[ModeProbe]
    first_forward_modes: dict[str, bool] | None = None  # fallback when no Lightning fit is seen
    direct_fits: int = 0

    def not_built_here(self) -> str:
        if self.direct_fits:
            return (
                f"{self.direct_fits} pl.Trainer fit(s) of a Trainer not built by lmlab.training.build_trainer"
            )
        return "no Lightning fit"

    def summary(self) -> str:
        return f"{self.recipe.id} exited {self.code}: {_last_line(self.stderr) or _last_line(self.stdout)}"


_RUNS: dict[str, Run] = {}


def run_of(recipe: Recipe, assets: Assets) -> Run:
    """The tiny run of `recipe` (2 steps of 2 micro-batches, seed 7), once per module."""
    if recipe.id in _RUNS:
        return _RUNS[recipe.id]
    command = _commands(recipe.package)[recipe.command]
    command.resolve_run()  # import the command's module before patching build_trainer into it
    out = assets.root / "runs" / recipe.id.replace(" ", "_")
    argv = [recipe.command, *recipe.args(assets, out)]
    for flag, value in {**RUN_FLAGS, "output_dir": str(out)}.items():
        spelling = _spelling(command, flag)
        if spelling is not None:
            argv += [f"--{spelling}", value]
        elif flag in recipe.fallback:
            argv += recipe.fallback[flag](out)
    with probing() as (probes, forward):
        code, stdout, stderr = _call(recipe.package, argv)
        run = Run(recipe, out, argv, code, stdout, stderr, list(probes), forward.modes, forward.direct_fits)
    _RUNS[recipe.id] = run
    return run


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    _RUNS.clear()
    return Assets(tmp_path_factory.mktemp("contract"))


@pytest.fixture
def recipe(request) -> Recipe:
    return RECIPES[request.param]


def _args_for_print(recipe: Recipe, assets: Assets, out: Path) -> list[str]:
    command = _commands(recipe.package)[recipe.command]
    argv = [recipe.command, *recipe.args(assets, out)]
    for flag, make in recipe.fallback.items():
        if _spelling(command, flag) is None:
            argv += make(out)
    return argv


# ------------------------------------------------------------------------------------------------ 1. flags


@pytest.mark.parametrize("recipe", IDS, indirect=True)
def test_help_lists_every_common_flag(recipe):
    command = _commands(recipe.package)[recipe.command]
    code, text, err = _call(recipe.package, [recipe.command, "--help"])
    assert code == 0, f"{recipe.id} --help exited {code}: {_last_line(err)}"
    missing = []
    for flag in COMMON:
        names = [flag, *(a for a, t in (command.aliases or {}).items() if t == flag)]
        if not any(f"--{name} " in text for name in names):
            missing.append(f"--{flag}")
    assert not missing, f"{recipe.id} --help lacks {', '.join(missing)}"


@pytest.mark.parametrize("recipe", IDS, indirect=True)
def test_print_config_shows_each_common_flag(recipe, assets, tmp_path):
    command = _commands(recipe.package)[recipe.command]
    base = _args_for_print(recipe, assets, tmp_path / "base")
    values = {**PRINT_VALUES, "output_dir": str(tmp_path / "elsewhere")}
    problems = []
    for flag, value in values.items():
        spelling = _spelling(command, flag) or flag
        code, out, err = _call(recipe.package, [*base, f"--{spelling}", value, "--print_config"])
        if code != 0:
            problems.append(f"--{flag} {value}: exit {code} ({_last_line(err)})")
            continue
        cfg = yaml.safe_load(out)
        key = _canonical(command, spelling)
        if not isinstance(cfg, dict) or key not in cfg:
            problems.append(f"--{flag} {value}: no {key!r} in the resolved config")
        elif str(cfg[key]) != value:
            problems.append(f"--{flag} {value}: resolved {key} = {cfg[key]!r}")
    assert not problems, f"{recipe.id} --print_config:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------ 2. layout


WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def _weights_digest(path: Path) -> str:
    """A digest of the tensors a checkpoint file holds (its `state_dict` for a Lightning/torch checkpoint), in
    key order and ignoring the key names: torch.save writes the file name into the archive, so two copies of
    the same weights differ in bytes. Files that do not load as tensors are compared by their bytes."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            tensors = obj.get("state_dict", obj) if isinstance(obj, dict) else None
            if (
                not isinstance(tensors, dict)
                or not tensors
                or not all(isinstance(v, torch.Tensor) for v in tensors.values())
            ):
                raise ValueError("not a dict of tensors")
    except Exception:  # noqa: BLE001 - compare such files by their bytes
        return "bytes:" + hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "weights:" + h.hexdigest()


def _checkpoint_duplicates(out: Path) -> list[str]:
    """Weight files that hold the same tensors as another one; the export (`model/`, or files at the top of the
    run folder where a package exports there, reported apart) is a copy by design and left out."""
    by_digest: dict[str, list[str]] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if (
            path.is_symlink()
            or not path.is_file()
            or rel.parts[0] == "model"
            or len(rel.parts) == 1
            or path.suffix not in WEIGHT_SUFFIXES
        ):
            continue
        by_digest.setdefault(_weights_digest(path), []).append(str(rel))
    return [" = ".join(paths) for paths in by_digest.values() if len(paths) > 1]


def _elsewhere(out: Path, name: str) -> str:
    found = [str(p.relative_to(out)) for p in out.rglob(name)] if out.is_dir() else []
    return f" (found at {', '.join(found[:3])})" if found else ""


@pytest.mark.parametrize("recipe", IDS, indirect=True)
def test_run_folder_layout(recipe, assets):
    run = run_of(recipe, assets)
    assert run.code == 0, run.summary()
    out = run.output_dir
    problems = []
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "checkpoints/last.ckpt",
        "results.json",
        "report.md",
        "DONE",
    ):
        if not (out / name).is_file():
            problems.append(f"no {name}{_elsewhere(out, Path(name).name)}")
    if (out / "metrics.jsonl").is_file():
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if not rows:
            problems.append("metrics.jsonl is empty")
        seen, twice = set(), set()
        for row in rows:
            for key in row:
                if key in ("step", "epoch"):  # Lightning adds `epoch` to every row it logs
                    continue
                if (row.get("step"), key) in seen:
                    twice.add((row.get("step"), key))
                seen.add((row.get("step"), key))
        if twice:
            problems.append(f"metrics.jsonl repeats (step, key) {sorted(twice, key=str)[:4]}")
    duplicates = _checkpoint_duplicates(out) if out.is_dir() else []
    if duplicates:
        problems.append(f"checkpoint stored twice: {'; '.join(duplicates[:3])}")
    model = out / "model"
    if not (model / "config.json").is_file():
        problems.append(f"no model/ export{_elsewhere(out, 'config.json')}")
    else:
        from transformers import AutoConfig, AutoModel

        try:
            AutoConfig.from_pretrained(model)
            AutoModel.from_pretrained(model)
        except Exception as err:  # noqa: BLE001 - the message is the finding
            problems.append(
                f"model/ does not load with AutoConfig/AutoModel: {type(err).__name__}: {err}"[:300]
            )
    if (out / "DONE").is_file():
        done = (out / "DONE").stat().st_mtime
        later = [p.name for p in out.iterdir() if p.name != "DONE" and p.stat().st_mtime > done + 1e-3]
        if later:
            problems.append(f"DONE is not written last ({', '.join(sorted(later)[:4])} after it)")
    assert not problems, f"{recipe.id} run folder {out.name}:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------ 3. modes


@pytest.mark.parametrize("recipe", IDS, indirect=True)
def test_modules_in_train_mode_at_first_step(recipe, assets):
    run = run_of(recipe, assets)
    observed = [
        (f"fit {i}", p.modes, p.eval_modules) for i, p in enumerate(run.probes) if p.modes is not None
    ]
    if not observed and run.first_forward_modes is not None:  # trained without lmlab.training.build_trainer
        observed = [(f"first training forward ({run.not_built_here()})", run.first_forward_modes, [])]
    assert observed, (
        f"{recipe.id}: no training step observed ({len(run.probes)} trainer(s) built; {run.summary()})"
    )
    problems = []
    for where, modes, declared in observed:

        def frozen(name: str, declared=declared) -> bool:
            name = name.removesuffix(UNREGISTERED)  # TrainMode finds declared modules outside the tree too
            return any(name == d or name.startswith(d + ".") for d in declared)

        wrong_eval = [n or "<root>" for n, training in modes.items() if not training and not frozen(n)]
        wrong_train = [n for n, training in modes.items() if training and frozen(n)]
        hidden = sorted(
            {n.split(".")[0].removesuffix(UNREGISTERED) for n in wrong_eval if n.endswith(UNREGISTERED)}
        )
        if hidden:
            problems.append(
                f"{where}: {', '.join(hidden)} held outside the module tree in eval mode "
                f"({sum(n.endswith(UNREGISTERED) for n in wrong_eval)} modules) without being in eval_modules "
                f"{declared}"
            )
        plain = [n for n in wrong_eval if not n.endswith(UNREGISTERED)]
        if plain:
            problems.append(
                f"{where}: {len(plain)} of {len(modes)} modules in eval mode without being in eval_modules "
                f"{declared}: {', '.join(plain[:5])}"
            )
        if wrong_train:
            problems.append(
                f"{where}: {len(wrong_train)} modules under eval_modules in train mode: {wrong_train[:5]}"
            )
    assert not problems, f"{recipe.id}:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------ 4. effect


@pytest.mark.parametrize("recipe", IDS, indirect=True)
def test_common_flags_take_effect_in_the_run(recipe, assets):
    run = run_of(recipe, assets)
    command = _commands(recipe.package)[recipe.command]
    problems = [
        f"does not accept --{flag}"
        for flag in (
            "accumulate_grad_batches",
            "max_steps",
            "val_check_interval",
            "log_every_n_steps",
            "seed",
        )
        if _spelling(command, flag) is None
    ]
    probes = [p for p in run.probes if p.modes is not None]
    if not probes:
        problems.append(f"nothing to observe: {run.not_built_here()} ({run.summary()})")
    for i, p in enumerate(probes):
        tv = p.trainer_values
        if p.automatic_optimization:
            if tv["accumulate_grad_batches"] != ACCUMULATE:
                problems.append(f"fit {i}: trainer.accumulate_grad_batches = {tv['accumulate_grad_batches']}")
        elif p.global_step and p.batches != ACCUMULATE * p.global_step:
            problems.append(
                f"fit {i}: manual optimisation took {p.batches} batches for {p.global_step} optimizer steps "
                f"(--accumulate_grad_batches {ACCUMULATE} asks {ACCUMULATE} per step)"
            )
        if p.global_step != STEPS or tv["max_steps"] != STEPS:
            problems.append(
                f"fit {i}: ended at global_step {p.global_step} (trainer.max_steps {tv['max_steps']})"
            )
        if tv["val_check_interval"] != VAL_EVERY:
            problems.append(f"fit {i}: trainer.val_check_interval = {tv['val_check_interval']}")
        if tv["log_every_n_steps"] != LOG_EVERY:
            problems.append(f"fit {i}: trainer.log_every_n_steps = {tv['log_every_n_steps']}")
        if tv["seed"] != SEED:
            problems.append(f"fit {i}: ExactResume seed = {tv['seed']}")
    assert not problems, f"{recipe.id}:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------------------ 5. overwrite


@pytest.mark.parametrize("recipe", IDS, indirect=True)
def test_finished_run_is_refused_then_overwritten_afresh(recipe, assets):
    run = run_of(recipe, assets)
    assert run.code == 0, run.summary()
    command = _commands(recipe.package)[recipe.command]
    flag = _spelling(command, "overwrite")
    assert flag is not None, f"{recipe.id} does not accept --overwrite"
    out = run.output_dir.with_name(
        run.output_dir.name + "_again"
    )  # a copy: the other checks read the original
    shutil.copytree(run.output_dir, out)
    argv = [a.replace(str(run.output_dir), str(out)) for a in run.argv]

    def files() -> dict[str, int]:
        return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    before = files()
    code, _, err = _call(recipe.package, argv)
    assert code != 0 and "--overwrite" in _last_line(err), (
        f"{recipe.id} again into its finished run exited {code}: {_last_line(err)}"
    )
    assert files() == before, f"{recipe.id}: the refused rerun changed the finished run folder"

    stale = out / "model" / "stale-from-the-old-run.txt"
    stale.write_text("old")
    with probing() as (probes, _forward):
        code, _, err = _call(recipe.package, [*argv, f"--{flag}", "true"])
        batches = sum(p.batches for p in probes)
    assert code == 0, f"{recipe.id} --overwrite true exited {code}: {_last_line(err)}"
    assert not stale.exists(), f"{recipe.id} --overwrite kept the old run's model/ files"
    assert batches == STEPS * ACCUMULATE * max(1, len([p for p in probes if p.modes is not None])), (
        f"{recipe.id} --overwrite trained {batches} batches, not a fresh run's {STEPS * ACCUMULATE} per fit "
        "(did it resume from the old last.ckpt?)"
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "step" in r]
    assert steps == sorted(steps), f"{recipe.id} --overwrite appended to the old metrics.jsonl: steps {steps}"
    assert (out / "DONE").is_file()
