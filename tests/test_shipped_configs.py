"""Every shipped config loads, builds its groups from ``data.groups`` and trains a few steps:
centralized steps with its own model, method and loss on its data, and, for a federated config
with a small population, one in-process federated round through the Flower layers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedanchors.centralized import CentralizedTrainer
from fedanchors.config import to_dict
from fedanchors.configure import from_dict, load_config, replace
from fedanchors.data import build_scenario
from fedanchors.population import build_population

from .conftest import REPO
from .fixtures import make_waterbirds

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
SMALL = ["data.max_per_group=120", "optim.batch_size=32", "progress=false", "dfr.enabled=false"]
# large populations: all their data, all clients
WHOLE = {
    "femnist_fed.yaml": 110,
    "privacy_femnist_fed.yaml": 110,
    "scale_1000_fed.yaml": 1000,
    "scale_10k_fed.yaml": 10000,
    "privacy_1000_fed.yaml": 1000,
}


def _config(name: str, tmp_path: Path, shared_data: Path):
    root = make_waterbirds(tmp_path, per_cell=3) if name == "waterbirds.yaml" else shared_data
    small = SMALL[1:] if name in WHOLE else SMALL
    sets = [*small, f"data.root={root}", f"out_dir={tmp_path / 'runs'}"]
    if name == "waterbirds.yaml":  # the fixture's images at 16x16: the groups' source option
        raw = to_dict(load_config(REPO / "configs" / name, sets))
        raw["data"]["groups"] = [{**to_dict(g), "options": {**g.options, "size": 16}} for g in load_config(
            REPO / "configs" / name, sets).data.groups]  # fmt: skip
        return from_dict(raw)
    return load_config(REPO / "configs" / name, sets)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_trains_a_few_steps_from_its_groups(name, tmp_path, shared_data):
    cfg = _config(name, tmp_path, shared_data)
    assert cfg.data.groups and not cfg.data.scenario  # written out, one way
    data = build_scenario(cfg.data)
    assert data.names == [g.name for g in cfg.data.groups]
    tr = CentralizedTrainer(replace(cfg, ["mode=centralized", "privacy.enabled=false"]), data)
    before = [p.detach().clone() for p in tr.model.parameters()]
    for idx in tr.epoch_batches()[:2]:
        out = tr.train_step(idx, 0)
        assert all(math.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    if cfg.mode != "federated":
        return
    population = build_population(data, cfg.federated, cfg.seed)
    if name in WHOLE:  # femnist_fed (a client per writer), scale_1000_fed: their populations build
        assert len(population) == WHOLE[name]
        return
    from .flower_harness import train_rounds

    one = replace(cfg, ["federated.rounds=1", "federated.local_steps=2"])
    server, _ = train_rounds(one, len(population), data.num_classes)
    assert all(torch.isfinite(v).all() for v in server.head.state_dict().values())
    assert server.client_rounds and max(server.client_rounds) == 1  # the sampled clients trained round 1
