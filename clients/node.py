"""What a node's process keeps between messages: the scenario and its population (read once),
each client's slice of its group (cut once) and the fresh models a visit starts from (built
once, copied per visit). One set per process: a Ray actor, a SuperNode, or the in-process
engine's driver."""

from __future__ import annotations

import json

from fedanchors.config import Config, to_dict
from fedanchors.data import GroupData, ScenarioData
from fedanchors.models import FreshModels
from fedanchors.population import Client, build_population, client_data
from fedanchors.runs import build_data

_DATA: dict[str, tuple[ScenarioData, list[Client]]] = {}  # read-only cache per actor process
_SLICES: dict[int, GroupData] = {}  # the clients' slices of that scenario, cut once per actor
FRESH = FreshModels()  # fresh models, built once per process and copied per visit
_KEYS: dict[int, tuple[Config, str]] = {}  # id(config) -> (config, its scenario key)


def scenario(cfg: Config, built: ScenarioData | None = None) -> tuple[ScenarioData, list[Client]]:
    """The scenario and its population (one per process, keyed by the config that makes them).
    ``built``: ``cfg.data``'s scenario already at hand (the in-process engine's driver read it)."""
    key = _scenario_key(cfg)
    if key not in _DATA:
        _DATA.clear()
        _SLICES.clear()
        data = built if built is not None else build_data(cfg.data)
        _DATA[key] = (data, build_population(data, cfg.federated, cfg.seed))
    return _DATA[key]


def _scenario_key(cfg: Config) -> str:
    """What makes the scenario and its population, as a string; kept per config object (a
    frozen dataclass, so its key cannot change): written out once, not on every message."""
    held = _KEYS.get(id(cfg))
    if held is not None and held[0] is cfg:
        return held[1]
    f = cfg.federated
    parts = (f.clients, f.group_clients, f.partition, f.partition_alpha, f.partition_labels, cfg.seed)
    key = json.dumps([to_dict(cfg.data), *parts], sort_keys=True)
    if len(_KEYS) >= 64:
        _KEYS.clear()
    _KEYS[id(cfg)] = (cfg, key)  # cfg held: its id stays its own
    return key


def client_group(cfg: Config, pid: int) -> tuple[GroupData, int]:
    """This client's own slice of its group, and the group's index."""
    data, population = scenario(cfg)
    if not 0 <= pid < len(population):
        raise ValueError(f"partition-id {pid} is outside the population 0..{len(population) - 1}")
    c = population[pid]
    if pid not in _SLICES:  # indexing copies the rows: once, not on every message
        _SLICES[pid] = client_data(data.groups[c.group], c)
    return _SLICES[pid], c.group
