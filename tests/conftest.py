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
