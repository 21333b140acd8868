"""``python -m fedanchors.evaluate runs/X [--split test] [--checkpoint best|last]``.

Restores a finished (or interrupted) run's model from its own directory and config, in
either mode, and prints and writes the group-wise metrics of ``fedanchors.metrics``: the
same per-group, worst-group and balanced accuracies as the run's summary (``test_*`` keys
for the best checkpoint on the test split, exactly). A federated model is the server's
state (head, anchors, shared encoders) plus each client's private encoder, read from the
state file the checkpoint names (``clients/<partition>/r<round>.pt``). Everything is read
with ``weights_only=True``: loading a run directory never runs code from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from fedanchors.config import Config, load_config
from fedanchors.data import ScenarioData
from fedanchors.errors import ConfigError, FedAnchorsError
from fedanchors.fileio import write_atomic
from fedanchors.metrics import client_accuracies, client_summary, group_metrics, split_counts, summarize
from fedanchors.models import build_encoder, build_head
from fedanchors.population import build_population, client_data, has_population, held_out
from fedanchors.resume import CLIENT_KEYS, CheckpointError, client_state_path, load
from fedanchors.rundir import RunDir, _jsonable, resolve_device

FILES = {"centralized": "{}.pt", "federated": "{}_server.pt"}


def _module(build, state: dict, what: str, path: Path) -> torch.nn.Module:
    m = build()
    try:
        m.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(f"{path}: the {what} does not match the run's config ({reason})") from None
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


def federated_metrics(encoders, head, data: ScenarioData, population, split: str, device) -> dict[str, float]:
    """What the server computes from its clients' evaluation replies: each client's counts on
    its own slice with its own encoder, summed per group in partition order, and the
    client-level accuracies."""
    C, G = data.num_classes, len(data.groups)
    correct = torch.zeros(G, C, dtype=torch.int64)
    total = torch.zeros(G, C, dtype=torch.int64)
    loss = torch.zeros(G, dtype=torch.float64)
    accs = []
    heads = head if isinstance(head, list) else [head] * len(population)  # local heads: one per client
    for enc, hd, c in zip(encoders, heads, population):
        if enc is None:  # a held-out new client: not part of the training clients' metrics
            accs.append(float("nan"))
            continue
        part = getattr(client_data(data.groups[c.group], c), split)
        cc, ct, cl = split_counts(enc, hd, part, C, 512, device)
        correct[c.group] += cc
        total[c.group] += ct
        loss[c.group] += cl
        accs.append(float(cc.sum()) / int(ct.sum()) if int(ct.sum()) else float("nan"))
    out = summarize(data.names, correct, total, loss, data.class_sets)
    return out | client_summary(accs, [c.group for c in population], data.names) | {"client_accs": accs}


def evaluate_run(path: str | os.PathLike, split: str = "test", which: str = "best") -> dict[str, float]:
    """The group-wise metrics of a run's ``which`` checkpoint on ``split``, keys ``<split>_*``;
    also written to ``<run>/evaluate_<which>_<split>.json``."""
    from fedanchors.data import build_scenario

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split}: use train, val or test")
    if which not in ("best", "last"):
        raise ConfigError(f"--checkpoint {which}: use best or last")
    run = RunDir.open(path, lock=False)
    cfg = load_config(run.path / "config.yaml")
    data = build_scenario(cfg.data)
    device = resolve_device(cfg.device)
    encoders, head = restore(run.path, cfg, data, which, device)
    for mod in [*encoders, *(head if isinstance(head, list) else [head])]:
        if mod is not None:
            mod.to(device)
    if cfg.mode == "federated":
        population = build_population(data, cfg.federated, cfg.seed)
        metrics = federated_metrics(encoders, head, data, population, split, device)
    else:
        metrics = group_metrics(encoders, head, data, split, device)
        if has_population(cfg.federated, data):
            population = build_population(data, cfg.federated, cfg.seed)  # the centralized run's client view
            accs = client_accuracies(encoders, head, data, population, split, device)
            metrics |= client_summary(accs, [c.group for c in population], data.names) | {"client_accs": accs}
    out = {f"{split}_{k}": v for k, v in metrics.items()}
    write_atomic(run.path / f"evaluate_{which}_{split}.json", (json.dumps(_jsonable(out), indent=2) + "\n").encode())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedanchors.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory, e.g. runs/digits")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--checkpoint", default="best", help="best (default) or last")
    args = p.parse_args(argv)
    try:
        out = evaluate_run(args.run, args.split, args.checkpoint)
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    print(json.dumps(_jsonable(out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
