"""The cost of the gap analyses: the same run with every analysis on at 10 chosen epochs
(rounds) against the run with them off, side by side, alternating, each in a fresh process.

    python bench/bench_analysis.py [--config configs/colored_mnist.yaml] [--repeats 2]
    python bench/bench_analysis.py --config configs/colored_mnist_fed.yaml --set federated.rounds=100

Prints the median wall time (``wall_time_s`` of the summary: the training loop, without
start-up) of each and the ratio on / off. Every analysis runs: gradient basis, gap dynamics
(with the centralized probe step), static / dynamic decomposition (a logistic probe) and
Jacobian norms. Run it alone: two torch processes at once on 2 cores oversubscribe them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ON = ["analysis.gradient_basis=true", "analysis.gap_dynamics=true", "analysis.static_dynamic=true",
      "analysis.jacobian=true"]  # fmt: skip


def run(config: str, sets: list[str], out: str, name: str) -> float:
    cmd = [sys.executable, "-m", "fedanchors.simulate", "--config", config]
    for s in [*sets, f"out_dir={out}", f"name={name}", "progress=false"]:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return json.loads((Path(out) / name / "summary.json").read_text())["wall_time_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/colored_mnist.yaml")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from fedanchors.configure import load_config

    cfg = load_config(args.config, args.set)
    total = cfg.federated.rounds if cfg.mode == "federated" else cfg.optim.epochs
    at = sorted({max(1, round(total * (i + 1) / 10)) for i in range(10)})
    on = [*args.set, *ON, f"analysis.at=[{', '.join(map(str, at))}]"]
    times: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            times["off"].append(run(args.config, args.set, out, f"off{r}"))
            times["on"].append(run(args.config, on, out, f"on{r}"))
    off, on_ = statistics.median(times["off"]), statistics.median(times["on"])
    unit = "rounds" if cfg.mode == "federated" else "epochs"
    print(f"{args.config}: {total} {unit}, analyses at {at}")
    print(f"analyses off: {off:.1f} s   on: {on_:.1f} s   ratio on/off: {on_ / off:.2f} ({args.repeats} repeats each)")


if __name__ == "__main__":
    main()
