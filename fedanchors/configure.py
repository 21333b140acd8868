"""Configs as every entry point loads them: parsed (``fedanchors.config``), a named baseline's
settings merged in, then checked against the registries and across fields
(``fedanchors.config_checks``). ``fedanchors.config`` stays a leaf; this module sits above
the registries it checks against.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedanchors.baselines import apply_baseline
from fedanchors.config import Config, apply_overrides, parse_config, read_yaml, to_dict
from fedanchors.config_checks import validate
from fedanchors.errors import ConfigError
from fedanchors.plugins import load_plugins


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a plain nested mapping (a ``baseline``'s settings merged
    in); the plugins ``$FEDANCHORS_PLUGINS`` names are imported first (``fedanchors.plugins``)."""
    load_plugins()
    if raw.get("baseline"):
        raw = apply_baseline(raw)
    cfg = parse_config(raw)
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (or the defaults when None), apply overrides, validate."""
    raw = read_yaml(path) if path else {}
    if not raw.get("name") and path:
        raw["name"] = Path(path).stem
    return from_dict(apply_overrides(raw, list(overrides)))


def from_run_config(run_config: dict) -> Config:
    """The Config named by Flower's flat run config (``config`` path, ``overrides`` "k=v k=v")."""
    if "config" not in run_config:
        raise ConfigError("the Flower run config has no 'config' key; pass --run-config 'config=\"configs/X.yaml\"'")
    overrides = [s for s in str(run_config.get("overrides", "")).split() if s]
    path = Path(str(run_config["config"]))
    app_dir = Path(__file__).resolve().parents[1]  # the app (a FAB installed by Flower, or the repo)
    if not path.is_absolute() and not path.exists() and (app_dir / path).exists():
        path = app_dir / path
    return load_config(str(path), overrides)


def replace(cfg: Config, overrides: list[str]) -> Config:
    """A new Config with ``a.b=value`` overrides applied and validated."""
    return from_dict(apply_overrides(to_dict(cfg), overrides))
