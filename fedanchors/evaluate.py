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

import torch

from fedanchors.configure import load_config
from fedanchors.data import ScenarioData
from fedanchors.errors import ConfigError, FedAnchorsError
from fedanchors.fileio import write_atomic
from fedanchors.metrics import client_accuracies, client_summary, group_metrics, split_counts, summarize
from fedanchors.population import build_population, client_data, has_population
from fedanchors.rundir import RunDir, _jsonable, resolve_device
from fedanchors.runs import FILES, build_data, restore  # noqa: F401 (FILES, restore: importable from here too)


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
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split}: use train, val or test")
    if which not in ("best", "last"):
        raise ConfigError(f"--checkpoint {which}: use best or last")
    run = RunDir.open(path, lock=False)
    cfg = load_config(run.path / "config.yaml")
    data = build_data(cfg.data)
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
