"""The extension recipes of docs/architecture.md, followed literally: each section's files are
written as shown into a plugin folder, its command is run as shown (a few steps), and the run
must have used the new part, which the same config cannot name without the plugin."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
FAST = ["optim.epochs=1", "data.max_per_group=150", "federated.rounds=2", "progress=false"]


def recipes() -> dict[str, tuple[dict[str, str], str]]:
    """{recipe: ({file: text}, command)} from the page's "Recipe:" sections."""
    out = {}
    for section in re.split(r"^### Recipe: ", DOC.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        files = {}
        for lang, body in re.findall(r"```(python|yaml)\n(.*?)```", section, re.S):
            first = body.splitlines()[0]
            assert first.startswith("# plugins/"), f"{title}: a {lang} block must start with its file name"
            files[first[2:].strip()] = body
        (command,) = re.findall(r"```bash\n(.*?)```", section, re.S)
        out[title] = (files, command.strip())
    return out


RECIPES = recipes()


def test_the_page_has_the_five_recipes():
    assert sorted(RECIPES) == ["a baseline", "a data source", "a method", "an aggregation rule", "an encoder"]
    assert all(len([f for f in files if f.endswith(".py")]) == 1 for files, _ in RECIPES.values())  # one file each


@pytest.mark.slow
@pytest.mark.parametrize("title", sorted(RECIPES))
def test_recipe_followed_literally(title, tmp_path):
    from fedanchors.configure import load_config
    from fedanchors.errors import ConfigError

    files, command = RECIPES[title]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    argv = shlex.split(command)
    env_var, argv = argv[0], argv[1:]
    assert env_var == "FEDANCHORS_PLUGINS=plugins" and argv[:3] == ["python", "-m", "fedanchors.simulate"]
    config = argv[argv.index("--config") + 1]
    path = tmp_path / config if config.startswith("plugins/") else ROOT / config
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    # without the plugin, the config cannot name the new part: one line, exit 2 at load
    assert "FEDANCHORS_PLUGINS" not in os.environ
    with pytest.raises(ConfigError, match=r"unknown|not registered"):
        load_config(str(path), sets)
    out = tmp_path / "runs"
    run = [sys.executable, "-m", "fedanchors.simulate", "--config", str(path), *(a for s in sets for a in ("--set", s))]
    run += [a for s in [*FAST, f"out_dir={out}"] for a in ("--set", s)]
    env = {**os.environ, "FEDANCHORS_PLUGINS": str(tmp_path / "plugins"), "FLWR_TELEMETRY_ENABLED": "0"}
    res = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    (rundir,) = [p for p in out.iterdir() if p.is_dir()]
    saved = yaml.safe_load((rundir / "config.yaml").read_text())
    summary = json.loads((rundir / "summary.json").read_text())
    assert 0 <= summary["test_acc_wg"] <= 1
    new = re.search(r'register\("([^"]+)"\)|@source\("([^"]+)"|baseline\("([^"]+)"', "".join(files.values()))
    name = next(g for g in new.groups() if g)
    assert name in json.dumps(saved), f"the run's config does not name {name}"


def test_a_broken_plugin_is_one_line_naming_its_file(tmp_path, monkeypatch):
    from fedanchors.errors import ConfigError
    from fedanchors.plugins import load_plugins

    (tmp_path / "broken.py").write_text("def f(:\n")
    monkeypatch.setenv("FEDANCHORS_PLUGINS", str(tmp_path))
    with pytest.raises(ConfigError, match=r"plugin .*broken\.py failed to import \(SyntaxError"):
        load_plugins()
    monkeypatch.setenv("FEDANCHORS_PLUGINS", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="is not a folder"):
        load_plugins()
    assert "fedanchors_plugin_broken" not in sys.modules
