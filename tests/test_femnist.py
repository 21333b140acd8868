"""FEMNIST (LEAF layout): writers as natural clients, two input-space groups, bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fedanchors.configure import load_config
from fedanchors.data import build_scenario
from fedanchors.errors import DataError
from fedanchors.population import build_population

from .conftest import REPO
from .test_config import assert_one_line_error, cli


def test_writers_are_natural_clients_with_their_own_splits(shared_data):
    cfg = load_config(REPO / "configs" / "femnist_fed.yaml", [f"data.root={shared_data}"])
    data = build_scenario(cfg.data)
    hi, lo = data.groups
    assert (hi.name, lo.name, hi.shape, lo.shape, data.num_classes) == ("hi", "lo", (1, 28, 28), (1, 14, 14), 62)
    assert len(hi.meta["writers"]) == 88 and len(lo.meta["writers"]) == 22  # 80% / 20% of 110
    assert not set(hi.meta["writers"]) & set(lo.meta["writers"])
    assert (
        sum(len(g.train) + len(g.val) for g in data.groups) == 14697 and sum(len(g.test) for g in data.groups) == 1695
    )
    assert data.class_sets["digits"] == list(range(10)) and data.class_sets["letters"] == list(range(10, 62))
    assert float(hi.train.x.mean()) < 0.5  # ink bright on black, as MNIST
    population = build_population(data, cfg.federated, cfg.seed)
    assert len(population) == 110 and [c.group for c in population].count(1) == 22
    for c in population[:5]:  # a client's examples are exactly one writer's
        g = data.groups[c.group]
        for split in ("train", "val", "test"):
            owners = g.meta["owners"][split][getattr(c, split)]
            assert len(owners) and bool((owners == c.index).all())
    rows = torch.cat([c.test for c in population if c.group == 0])
    assert sorted(rows.tolist()) == list(range(len(hi.test)))


def test_malformed_leaf_json_names_the_file_and_key(shared_data, tmp_path):
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / "femnist" / split).mkdir(parents=True)
        name = sorted((shared_data / "femnist" / split).glob("*.json"))[0]
        shutil.copy(name, root / "femnist" / split / name.name)
    victim = sorted((root / "femnist" / "train").glob("*.json"))[0]
    raw = json.loads(victim.read_text())
    del raw["user_data"][raw["users"][0]]["y"]
    victim.write_text(json.dumps(raw))
    cfg = load_config(REPO / "configs" / "femnist.yaml", [f"data.root={root}"])
    with pytest.raises(DataError, match=r"lacks matching 'x' and 'y'"):
        build_scenario(cfg.data)
    victim.write_text("{not json")
    res = cli("--config", "configs/femnist.yaml", "--set", f"data.root={root}", "--set", f"out_dir={tmp_path / 'r'}")
    assert_one_line_error(res, str(victim), "not a readable LEAF JSON file")
    assert not (tmp_path / "r").exists()


def test_natural_partition_needs_a_dataset_with_clients(tmp_path):
    res = cli(
        "--config", "configs/digits_fed.yaml", "--set", "federated.partition=natural", "--set", f"out_dir={tmp_path}"
    )
    assert_one_line_error(res, "natural needs a source with its own clients")
