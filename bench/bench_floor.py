"""A federated round against its compute floor: fedanchors and the plain PyTorch FedAvg loop
(``bench/reference_fedavg.py``) on identical work, side by side in one run.

    python bench/bench_floor.py [--workloads digits femnist] [--rounds 5 25] [--engines ray inprocess] [--repeat 3]
                                [--breakdown]

For each workload (``configs/bench/floor/<name>.yaml``) both run as fresh processes at two
round counts R1 < R2. Printed: the whole-process ratio at R2 (process start to exit, data
loading, Ray and the final evaluation included) and the per-round ratio: fedanchors' from the
difference (T(R2) - T(R1)) / (R2 - R1), which cancels every fixed cost, the loop's the mean
of its own rounds R1 + 1 .. R2, the same rounds and so the same sampled writers (it runs in
one process, on every core; on the ray engine fedanchors' clients run in Ray workers of one
CPU each, on the inprocess engine in the driver's process); and both runs' final test
accuracy (the same work). This shared machine's speed drifts by 10% or more between
minutes, so each pair is measured ``--repeat`` times, interleaved (the loop first, then
fedanchors first), and the median of the repeats' ratios is printed with their range. Where
the rest goes: ``--breakdown`` then profiles one in-process run of each workload
(``bench/floor_profile.py``: data, setup, local training, the clients' message handling, the
server's aggregation, evaluation, checkpoints, serialisation); on the ray engine the clients
run in Ray workers, which a driver-side profile does not see.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ENV = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FEDANCHORS_PLOTS": "0"}


def fedanchors(config: str, rounds: int, engine: str = "ray") -> tuple[float, float]:
    """(wall seconds of ``python -m fedanchors.simulate``, its test acc_all)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fedanchors.simulate", "--config", config, "--set", f"federated.rounds={rounds}",
               "--set", f"out_dir={out}", "--set", "progress=false", "--set", f"federated.engine={engine}"]  # fmt: skip
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        summary = json.loads(res.stdout[res.stdout.index("{") :])
        return wall, summary["test_acc_all"]


def reference(config: str, rounds: int) -> tuple[float, list[float], float]:
    """(wall seconds of the loop's process, each of its rounds in seconds, its test accuracy)."""
    cmd = [sys.executable, "bench/reference_fedavg.py", "--config", config, "--rounds", str(rounds)]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return time.perf_counter() - t, out["round_s"], out["test_acc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=["digits", "femnist"])
    p.add_argument("--rounds", nargs=2, type=int, default=[5, 25])
    p.add_argument("--engines", nargs="+", default=["ray", "inprocess"], choices=["ray", "inprocess"])
    p.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the median ratio is printed")
    p.add_argument("--breakdown", action="store_true", help="then where fedanchors' time goes, from a profile")
    a = p.parse_args()
    r1, r2 = a.rounds
    for name in a.workloads:
        config = f"configs/bench/floor/{name}.yaml"
        for engine in a.engines:
            whole, per, last = [], [], None
            for i in range(a.repeat):
                # the loop and fedanchors alternate which runs first, so a slow spell of this
                # shared machine falls on both sides across the repeats
                jobs = [(reference, (config, r2)), (fedanchors, (config, r1, engine))]
                jobs.append((fedanchors, (config, r2, engine)))
                order = range(3) if i % 2 == 0 else range(2, -1, -1)
                out = {j: jobs[j][0](*jobs[j][1]) for j in order}
                (p2, round_s, acc_p), (f1, _), (f2, acc_f) = out[0], out[1], out[2]
                per_p = statistics.mean(round_s[r1:r2])  # the rounds fedanchors' difference covers: the same writers
                per_f = (f2 - f1) / (r2 - r1)
                whole.append((f2, p2))
                per.append((per_f, per_p))
                last = (acc_f, acc_p)
                print(f"  {name} [{engine}] repeat {i + 1}: whole {f2:.1f} s / {p2:.1f} s = {f2 / p2:.2f}x, "
                      f"per round {per_f:.3f} s / {per_p:.3f} s = {per_f / per_p:.2f}x", flush=True)  # fmt: skip
            tag = f"{name} [{engine}]"
            for what, pairs in (("whole process", whole), ("per round", per)):
                ratios = sorted(f / r for f, r in pairs)
                spread = f" (repeats {ratios[0]:.2f}x-{ratios[-1]:.2f}x)" if len(ratios) > 1 else ""
                print(f"{tag}: {r2} rounds, {what}: median {statistics.median(ratios):.2f}x{spread}")
            print(f"{tag}: test acc_all fedanchors {last[0]:.4f}, reference {last[1]:.4f}")
        if a.breakdown:
            from bench.floor_profile import print_breakdown

            print_breakdown(name, config, r2)


if __name__ == "__main__":
    main()
