"""Shared fixtures: the real data folder, small configs, the Flower in-process harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedanchors.config import Config, to_dict
from fedanchors.configure import from_dict

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDANCHORS_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")
# runs in the suite write no figures (2 s a run); tests of the figures ask for them (``figures``)
os.environ.setdefault("FEDANCHORS_PLOTS", "0")


@pytest.fixture
def figures(monkeypatch):
    """This test's runs (in process or in subprocesses) write their figures."""
    monkeypatch.setenv("FEDANCHORS_PLOTS", "1")


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (or $FEDANCHORS_DATA); skipped where absent unless FEDANCHORS_REQUIRE_DATA=1."""
    if not (DATA / "mnist" / "MNIST" / "raw").is_dir():
        msg = f"real data folder {DATA} not found (set FEDANCHORS_DATA)"
        if os.environ.get("FEDANCHORS_REQUIRE_DATA") == "1":
            pytest.fail(msg + " but FEDANCHORS_REQUIRE_DATA=1")
        pytest.skip(msg)
    return DATA


def small_config(tmp_path: Path, **sections) -> Config:
    """A fast digits config (small CNNs), with nested overrides per section."""
    raw = to_dict(Config())
    raw.update(name="t", out_dir=str(tmp_path / "runs"), progress=False)
    raw["model"].update(latent_dim=16, encoder={"kind": "cnn", "channels": [8], "hidden": 32})
    raw["optim"].update(epochs=1, batch_size=64)
    raw["data"].update(max_per_group=200)
    for name, values in sections.items():
        if isinstance(values, dict):
            raw[name].update(values)
        else:
            raw[name] = values
    return from_dict(raw)


def named_groups(name: str, **options) -> list[dict]:
    """The groups of the named list ``fedanchors/data/presets/<name>.yaml`` as plain dicts, each
    with ``options`` merged into its source options (e.g. a Waterbirds image size)."""
    import yaml

    from fedanchors.data import PRESETS_DIR

    groups = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())["groups"]
    return [{**g, "options": {**g.get("options", {}), **options}} if options else g for g in groups]


def data_config(groups: list[dict], **fields):
    """A DataConfig of ``groups`` (plain dicts) and other ``data`` fields, parsed and checked."""
    return from_dict({"data": {"groups": groups, **fields}}).data


def digits_groups(sizes=(8, 16), fractions=(0.5, 0.5)) -> list[dict]:
    """The default's two UCI digits groups (``digits8``, ``digits16``) at the given pixel sizes
    and shares; equal sizes put both in one input space (one shared encoder)."""
    return [
        {"name": n, "source": "uci_digits", "fraction": f, "resize": s, "space": f"px{s}"}
        for n, s, f in zip(("digits8", "digits16"), sizes, fractions)
    ]
