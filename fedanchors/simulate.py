"""Entry point: ``python -m fedanchors.simulate --config configs/digits.yaml [--set k=v ...]``.

User errors (config, data, resources) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from fedanchors.config import Config, load_config
from fedanchors.errors import FedAnchorsError

EXIT_USER_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fedanchors.simulate", description=__doc__)
    p.add_argument("--config", help="YAML config (default: built-in digits defaults)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="run the config in both modes (same seed and sample budget) and compare them",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    return p.parse_args(argv)


def check_against_data(cfg: Config, data) -> None:
    """Config entries that name groups must match the scenario's groups (before any run dir)."""
    from fedanchors.methods import build_method
    from fedanchors.train import group_batch_sizes

    group_batch_sizes(data.names, cfg.optim)
    build_method(cfg.method, data.names)


def run(cfg: Config) -> dict:
    """Run ``cfg`` in its mode; returns the summary (also written to summary.json)."""
    from fedanchors.data import build_scenario
    from fedanchors.plots import plot_run
    from fedanchors.rundir import RunDir
    from fedanchors.samples import save_group_samples

    if cfg.mode == "federated":
        # The Flower layer lives outside the library (which never imports flwr); it
        # validates resources before any run directory is made.
        federated = importlib.import_module("server.simulation")
        federated.check_resources(cfg)
    data = build_scenario(cfg.data)
    check_against_data(cfg, data)
    run_dir = RunDir.create(cfg)
    save_group_samples(data, run_dir.path)
    if cfg.mode == "federated":
        summary = federated.run_federated(cfg, data, run_dir)
    else:
        from fedanchors.centralized import run_centralized

        summary = run_centralized(cfg, data, run_dir)
    summary["run_dir"] = str(run_dir.path)
    plot_run(run_dir.path)
    return summary


def run_compare(cfg: Config) -> str:
    """Run ``cfg`` centralized and federated with the same seed and sample budget, then compare.

    One local epoch per round and ``federated.rounds = optim.epochs``: every example is seen
    as often in both modes. Writes ``<out_dir>/<name>-compare/report.md`` and ``compare.png``.
    """
    from pathlib import Path

    from fedanchors.compare import compare
    from fedanchors.config import replace

    epochs = cfg.optim.epochs
    runs = []
    for mode in ("centralized", "federated"):
        sets = [
            f"mode={mode}",
            f"name={cfg.name}-{mode}",
            f"federated.rounds={epochs}",
            "federated.local_epochs=1",
            "federated.local_steps=0",
        ]
        runs.append(Path(run(replace(cfg, sets))["run_dir"]))
    out = Path(cfg.out_dir) / f"{cfg.name}-compare"
    out.mkdir(parents=True, exist_ok=True)
    md, _ = compare(runs, out / "report.md")
    return md


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "offline")
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.compare:
            print(run_compare(cfg))
            print(f"\nreport: {cfg.out_dir}/{cfg.name}-compare/report.md (curves: compare.png)")
            return 0
        summary = run(cfg)
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    keys = [k for k in summary if k.startswith("test_acc")] + ["wall_time_s", "device", "run_dir"]
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
