"""What a run is made of, rebuilt from a config and a run directory: its data (frozen features
included, which may be an earlier run's encoders) and its models (``restore``; a gate's
expert per group, ``group_models``). Everything is read with ``weights_only=True``.

This sits above the data, the models and the feature extractors; the extractors reach an
earlier run's encoders through ``run_encoders``, passed down, so no layer imports upward.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedanchors.config import Config
from fedanchors.configure import load_config
from fedanchors.data import ScenarioData, build_scenario
from fedanchors.errors import ConfigError
from fedanchors.features import with_features
from fedanchors.models import build_encoder, build_head
from fedanchors.population import build_population, held_out
from fedanchors.resume import CLIENT_KEYS, MISMATCH, CheckpointError, client_state_path, load, mismatch


def build_data(cfg) -> ScenarioData:
    """The data a ``DataConfig`` asks for: its groups, then ``data.features`` when set."""
    data = build_scenario(cfg)
    return with_features(data, cfg, run_encoders) if cfg.features.backbone else data


FILES = {"centralized": "{}.pt", "federated": "{}_server.pt"}


def _module(build, state: dict, what: str, path: Path) -> torch.nn.Module:
    m = build()
    try:
        m.load_state_dict(state)
    except MISMATCH as e:
        raise mismatch(f"{path}: the {what}", "the run's config", e, fix="") from None
    return m


def restore(run: Path, cfg: Config, data: ScenarioData, which: str, device: torch.device):
    """(encoders, head) of the run's ``which`` ("best" | "last") checkpoint: one encoder per
    group (centralized) or per client (federated)."""
    path = run / "checkpoints" / FILES[cfg.mode].format(which)
    m = cfg.model

    def encoder(g):
        return lambda: build_encoder(m, g.space, g.shape, cfg.seed, g.meta)

    def head():
        return build_head(m, data.num_classes, cfg.seed)

    if cfg.mode != "federated":
        state = load(path, device, ("model",), f"{which} checkpoint")["model"]
        enc = {}
        for g in data.groups:
            pre = f"encoders.{g.space}."
            part = {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
            enc.setdefault(g.space, _module(encoder(g), part, f"encoder of {g.space}", path))
        part = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        return [enc[g.space] for g in data.groups], _module(head, part, "head", path)
    state = load(path, device, ("head", "encoders", "client_rounds"), f"{which} server checkpoint")
    population = build_population(data, cfg.federated, cfg.seed)
    if len(state["client_rounds"]) != len(population):
        raise CheckpointError(f"{path} holds {len(state['client_rounds'])} clients, the config {len(population)}")
    shared = {
        space: _module(encoder(next(g for g in data.groups if g.space == space)), sd, f"shared encoder {space}", path)
        for space, sd in state["encoders"].items()
    }
    local_heads = cfg.federated.head_sharing == "local"
    held = held_out([c.group for c in population], cfg.federated.holdout, cfg.seed)
    encoders, heads = [], []  # one per client, in partition order (None: a held-out new client)
    for pid, c in enumerate(population):
        g = data.groups[c.group]
        if pid in held:
            encoders.append(None)
            heads.append(None)
            continue
        if g.space in shared and not local_heads:  # held by several clients: the server's averaged copy
            encoders.append(shared[g.space])
            continue
        rnd = int(state["client_rounds"][pid])
        if rnd <= 0:
            raise CheckpointError(f"{path}: client {pid} ({g.name}) never trained, so it has no model to restore")
        cpath = client_state_path(run, pid, rnd)
        keys = (*CLIENT_KEYS, "head") if local_heads else CLIENT_KEYS
        cstate = load(cpath, device, keys, f"client {pid}'s state file")
        if g.space in shared:
            encoders.append(shared[g.space])
        elif cstate["encoder"] is None:
            raise CheckpointError(f"{cpath} holds no encoder, and client {pid}'s encoder is private: restore the file")
        else:
            encoders.append(_module(encoder(g), cstate["encoder"], f"encoder of client {pid}", cpath))
        if local_heads:  # federated.head_sharing: local: each client predicts with its own head
            heads.append(_module(head, cstate["head"], f"head of client {pid}", cpath))
    return encoders, heads if local_heads else _module(head, state["head"], "head", path)


def group_models(run: Path, cfg: Config, data, device: torch.device) -> tuple[list, list]:
    """(encoder, head) of each group of the expert's best checkpoint. A federated expert needs
    one encoder per group: one client per group, or a shared encoder with a global head."""
    encoders, head = restore(run, cfg, data, "best", device)
    if cfg.mode != "federated":
        return encoders, [head] * len(data.groups)
    population = build_population(data, cfg.federated, cfg.seed)
    encs, heads = [], []
    for gi, g in enumerate(data.groups):
        pids = [p for p, c in enumerate(population) if c.group == gi]
        mine = {id(encoders[p]) for p in pids}
        if len(mine) != 1 or (isinstance(head, list) and len(pids) != 1):
            raise ConfigError(
                f"expert run {run}: group {g.name} has {len(pids)} clients with their own models; the gate "
                "needs one model per group (one client per group, or shared encoders and a global head)"
            )
        encs.append(encoders[pids[0]])
        heads.append(head[pids[0]] if isinstance(head, list) else head)
    return encs, heads


def run_encoders(run: Path, data) -> dict[str, nn.Module]:
    """``data.features.backbone: from_run``: the encoders of the run in ``run``, by input space."""
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"data.features.from_run: {run} is not a fedanchors run directory (no config.yaml)")
    rcfg = load_config(run / "config.yaml")
    rdata = build_data(rcfg.data)
    if rcfg.mode == "federated":
        encoders, _ = group_models(run, rcfg, rdata, torch.device("cpu"))
    else:
        encoders, _ = restore(run, rcfg, rdata, "best", torch.device("cpu"))
    by_space = {g.space: e.eval() for g, e in zip(rdata.groups, encoders)}
    missing = sorted(set(data.spaces()) - set(by_space))
    if missing:
        raise ConfigError(
            f"data.features.from_run: {run} has no encoder for input space(s) {missing} (it has {sorted(by_space)})"
        )
    return by_space
