"""``python -m fedanchors.gating --config configs/gating/<x>.yaml [--set k=v ...]``."""

from __future__ import annotations

import argparse
import json
import sys

from fedanchors.errors import FedAnchorsError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedanchors.gating", description="Train a gate over expert runs.")
    p.add_argument("--config", required=True, help="gating YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = p.parse_args(argv)
    from fedanchors.gating.config import load_gating_config
    from fedanchors.gating.run import run_gate
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
