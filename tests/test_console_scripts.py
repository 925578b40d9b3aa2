"""Every package's console script: installed, `--help` for it and every subcommand, `python -m` the same,
and `--help` fast because heavy libraries are imported only inside the commands."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def scripts(pkg_dir: Path) -> dict[str, str]:
    return tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("pkg_dir", PACKAGES, ids=lambda p: p.name)
def test_console_script_and_every_subcommand_help(pkg_dir, capsys):
    (script, target), *_ = scripts(pkg_dir).items()
    assert script == pkg_dir.name.replace("_", "-")
    module, _, func = target.partition(":")
    main = getattr(importlib.import_module(module), func)
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    commands = [line.split()[0] for line in listing.split("commands:", 1)[1].splitlines() if line.strip()]
    assert "demo" in commands and "bench" in " ".join(commands)
    for command in commands:
        assert main([command, "--help"]) == 0, command
        assert "options" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("pkg_dir", PACKAGES, ids=lambda p: p.name)
def test_installed_script_and_python_m_agree_without_heavy_imports(pkg_dir):
    script = next(iter(scripts(pkg_dir)))
    exe = Path(sys.executable).parent / script
    assert exe.exists(), f"{script} is not installed; run make install"
    via_script = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    via_module = subprocess.run(
        [sys.executable, "-m", pkg_dir.name, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert via_script == via_module
    probe = f"import sys, {pkg_dir.name}.cli; print(sorted(m for m in ('torch', 'transformers', 'pytorch_lightning') if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", f"{pkg_dir.name}.cli imports {loaded} at start-up; import them inside the commands"
