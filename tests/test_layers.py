"""The layers of pyproject.toml's ``[tool.importlinter]`` hold, and a forbidden import breaks them.

import-linter builds the import graph of ``fedanchors``, ``clients`` and ``server`` (imports
inside functions included) and checks the contracts: no cycles among siblings, no Flower in
the library but its CLIs, config a leaf, server above clients.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

LINT = [str(Path(sys.executable).parent / "lint-imports")]  # installed with import-linter (the dev extra)


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(root)}
    return subprocess.run([*LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "4 kept, 0 broken" in res.stdout


def test_a_forbidden_import_breaks_them(tmp_path):
    """config reaching up to the data (what tied 24 modules in one circle before) is refused:
    the leaf contract and the cycle contract both break, naming the import."""
    for part in ("fedanchors", "clients", "server"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "fedanchors" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _up():\n    from fedanchors.data import build_scenario  # noqa\n")
    res = _lint(tmp_path)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "config is a leaf" in res.stdout and "BROKEN" in res.stdout
    assert "fedanchors.config -> fedanchors.data" in res.stdout
    assert "2 kept, 2 broken" in res.stdout


def test_the_console_script_runs_each_command(capsys):
    """``fedanchors <command>``: the installed script (beside this Python) lists the commands,
    and each one answers --help from its own parser."""
    script = Path(sys.executable).parent / "fedanchors"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "simulate" in res.stdout and "gating-ablation" in res.stdout, res.stderr
    from fedanchors.cli import COMMANDS, main

    for name in COMMANDS:
        try:
            main([name, "--help"])
        except SystemExit as e:  # argparse's --help
            assert e.code == 0, name
        assert "usage:" in capsys.readouterr().out, name
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_modules_and_functions_stay_small():
    """No module of the library, the Flower layers or the benchmarks over 400 lines, no function
    over 60 (the tests excepted): a unit a reader can hold in view."""
    import ast

    big, long = [], []
    for part in ("fedanchors", "clients", "server", "bench"):
        for path in sorted((REPO / part).rglob("*.py")):
            src = path.read_text()
            if src.count("\n") > 400:
                big.append(f"{path.relative_to(REPO)}: {src.count(chr(10))} lines")
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not big and not long, big + long
