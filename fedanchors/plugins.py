"""Extensions in one file each, outside the package: every ``*.py`` file in the folders that
``$FEDANCHORS_PLUGINS`` lists (``os.pathsep``-separated) is imported before a config is
validated, in every process that reads one (the driver, each Ray worker's clients, a
SuperNode's). A plugin registers what it adds with the registries' decorators (a method, a
data source, an encoder, an aggregation rule, a baseline: ``docs/architecture.md`` has a
recipe for each); a config then names it like a built-in.

Only the folders the user names in the environment are read: a config or a run directory
never names code to import (loading a run directory never executes code from it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from fedanchors.errors import ConfigError

ENV = "FEDANCHORS_PLUGINS"
_loaded: dict[Path, str] = {}  # file -> module name, once per process


def plugin_files() -> list[Path]:
    """The plugin files ``$FEDANCHORS_PLUGINS`` names, folder by folder, sorted within one."""
    out = []
    for folder in filter(None, os.environ.get(ENV, "").split(os.pathsep)):
        p = Path(folder).expanduser().resolve()
        if not p.is_dir():
            raise ConfigError(f"{ENV}: {p} is not a folder; list folders of plugin .py files, or unset it")
        out += sorted(f for f in p.glob("*.py") if not f.name.startswith("_"))
    return out


def load_plugins() -> list[str]:
    """Import every plugin file not imported yet; their module names. A plugin that fails to
    import is a ConfigError naming the file and the error's last line."""
    for f in plugin_files():
        if f in _loaded:
            continue
        name = f"fedanchors_plugin_{f.stem}"
        spec = importlib.util.spec_from_file_location(name, f)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - a user's file: one line naming it
            del sys.modules[name]
            raise ConfigError(f"{ENV}: plugin {f} failed to import ({type(e).__name__}: {e}); fix the file") from None
        _loaded[f] = name
    return list(_loaded.values())
