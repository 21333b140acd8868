"""``python -m fedanchors.gating --config configs/gating/<x>.yaml [--set k=v ...]`` (also
``fedanchors gating ...``): train a gate over expert runs, training the experts first where a
config names one that has not run. The epoch loop, the central gate and the selection are
the library's (``fedanchors.gating.run``); the federated gate is the Flower layer's
(``server.gating``), reached from here, the CLIs' package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedanchors.cli.simulate import run_at
from fedanchors.config import to_dict
from fedanchors.configure import load_config
from fedanchors.errors import ConfigError, FedAnchorsError
from fedanchors.gating import core
from fedanchors.gating.config import GatingConfig
from fedanchors.gating.experts import expert_config, stack_experts
from fedanchors.gating.run import CentralGate, gate_loop, plot_history
from fedanchors.rundir import _jsonable, fresh_dir, resolve_device
from fedanchors.runs import FILES


def ensure_experts(cfg: GatingConfig) -> list[Path]:
    """Each expert's run directory; one with a ``config`` and no run yet is trained there first."""
    runs = []
    for e in cfg.experts:
        run = Path(e.run)
        if not (run / "config.yaml").is_file():
            if not e.config:
                raise ConfigError(
                    f"expert {e.name}: {run} is not a run directory; train it or give the expert a config"
                )
            ecfg = load_config(e.config, list(e.set))
            print(f"training expert {e.name} into {run}")
            run_at(ecfg, run)
        best = run / "checkpoints" / FILES[expert_config(run).mode].format("best")
        if not best.is_file():
            raise ConfigError(f"expert {e.name}: {run} has no best checkpoint (unfinished?); resume or retrain it")
        runs.append(run)
    return runs


def run_gate(cfg: GatingConfig) -> dict:
    """Train and select the gate; writes config.yaml, metrics.jsonl, history.json, best_gate.pt,
    summary.json and history.png under ``out_dir/name``; returns the summary."""
    import yaml

    runs = ensure_experts(cfg)
    device = resolve_device(cfg.device)
    names = [e.name for e in cfg.experts]
    splits, meta = stack_experts(runs, device)
    C = splits["gating"].logits.shape[-1]
    head = core.head_classes(C, meta["class_sets"], cfg)
    out = fresh_dir(cfg.out_dir, cfg.name or "gating")
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if cfg.mode == "federated":
        from server import gating as fed  # the Flower layer: only the CLI package imports it

        trainer = fed.FederatedGate(cfg, runs, meta["groups"], head, C)
        summary = fed.run_federated_gate(trainer, lambda: gate_loop(trainer, cfg, head, names, out))
    else:
        summary = gate_loop(CentralGate(cfg, splits, head), cfg, head, names, out)
    summary |= {"mode": cfg.mode, "experts": names, "head_classes": head.nonzero().flatten().tolist(),
                "gating_examples": len(splits["gating"]), "run_dir": str(out)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    plot_history(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedanchors.gating", description="Train a gate over expert runs.")
    p.add_argument("--config", required=True, help="gating YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = p.parse_args(argv)
    from fedanchors.gating.config import load_gating_config
    from fedanchors.rundir import _jsonable

    try:
        summary = run_gate(load_gating_config(args.config, args.set))
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    keys = ["best_epoch", "val_balanced_acc", "test_balanced_acc", "test_head_acc", "test_tail_acc"]
    keys += [k for k in summary if k.startswith("test_expert:") and k.endswith("balanced_acc")]
    keys += ["test_average_balanced_acc", "test_oracle_balanced_acc", "run_dir"]
    print(json.dumps(_jsonable({k: summary[k] for k in keys if k in summary}), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
