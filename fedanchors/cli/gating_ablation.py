"""``python -m fedanchors.gating.ablation --config configs/gating/<x>.yaml [--seeds 0 1 2]``

The gate's ablation over the same expert runs: the full objective (dense routing), each
loss switched off in turn, and top-k routing with and without load balancing; every row is
the mean ± std over gate seeds of the test head / tail / balanced accuracy at the epoch
selected on validation, with the best single expert and the oracle for reference. Writes
``<out_dir>/<name>_ablation.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "full objective, dense": [],
    "- class weights": ["loss.class_weights=false"],
    "- entropy": ["loss.entropy=false"],
    "- responsibility": ["loss.responsibility=false"],
    "- group prior": ["loss.prior=false"],
    "NLL only": ["loss.class_weights=false", "loss.entropy=false", "loss.responsibility=false", "loss.prior=false"],
    "top-2, full objective": ["gate.routing=top_k", "gate.top_k=2"],
    "top-2, - load balancing": ["gate.routing=top_k", "gate.top_k=2", "loss.load_balance=false"],
}


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def ablation(config: str, seeds: list[int], overrides: list[str] = ()) -> str:
    from fedanchors.cli.gating import run_gate
    from fedanchors.gating.config import load_gating_config

    base = load_gating_config(config, list(overrides))
    where = f"out_dir={Path(base.out_dir) / (base.name + '_ablation')}"
    rows, ref = [], None
    for i, (label, sets) in enumerate(VARIANTS.items()):
        got = []
        for s in seeds:
            cfg = load_gating_config(config, [*overrides, *sets, f"seed={s}", f"name=v{i}_seed{s}", where])
            out = run_gate(cfg)
            got.append(out)
            ref = ref or out
        cells = [_ms([o[f"test_{k}"] for o in got]) for k in ("head_acc", "tail_acc", "balanced_acc")]
        rows.append(f"| {label} | {' | '.join(cells)} | {_ms([o['test_effective_experts'] for o in got])} |")
    experts = [k.split(":")[1] for k in ref if k.startswith("test_expert:") and k.endswith(":balanced_acc")]
    best = max(experts, key=lambda e: ref[f"test_expert:{e}:balanced_acc"])
    for label, pre in ((f"best single expert ({best})", f"test_expert:{best}:"), ("oracle", "test_oracle_")):
        cells = [f"{ref[pre + k]:.3f}" for k in ("head_acc", "tail_acc", "balanced_acc")]
        rows.append(f"| {label} | {' | '.join(cells)} | |")
    head = "| gate | test head acc | test tail acc | test balanced acc | effective experts |\n|---|---|---|---|---|"
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedanchors.gating.ablation", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from fedanchors.errors import FedAnchorsError
    from fedanchors.gating.config import load_gating_config

    try:
        table = ablation(args.config, args.seeds, args.set)
        cfg = load_gating_config(args.config, args.set)
    except FedAnchorsError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    out = Path(cfg.out_dir) / f"{cfg.name}_ablation.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
