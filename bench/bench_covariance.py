"""Anchor covariance structures side by side: bytes per round and the cost of the W2 fit.

    python bench/bench_covariance.py [--rounds 3] [--config configs/digits_fed.yaml]

1. One federated run per ``anchors.covariance`` (full, diag, none) of the same config and
   seed, each in a fresh process: the array bytes the server sent and received per round
   (from ``metrics.jsonl``) and the test metrics.
2. The fit's forward + backward time at the clients' batch shape (C = 10 classes, d = 64):
   full Bures-Wasserstein against the diagonal closed form and the mean distance, in one
   process, interleaved, median of repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fedanchors.anchors import AnchorModule  # noqa: E402
from fedanchors.train import group_fit_losses  # noqa: E402


def federated(config: str, structure: str, rounds: int, out: str) -> dict:
    sets = [f"anchors.covariance={structure}", f"federated.rounds={rounds}", f"out_dir={out}"]
    sets += [f"name=cov_{structure}", "progress=false"]
    cmd = [sys.executable, "-m", "fedanchors.simulate", "--config", config]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    recs = [json.loads(line) for line in (Path(out) / f"cov_{structure}" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((Path(out) / f"cov_{structure}" / "summary.json").read_text())
    per_round = [(r["bytes_sent"] + r["bytes_received"]) / 1e6 for r in recs if "bytes_sent" in r]
    return {
        "MB/round": statistics.median(per_round),
        "acc_all": summary["test_acc_all"],
        "acc_wg": summary["test_acc_wg"],
    }


def fit_time(structure: str, repeats: int = 30) -> float:
    torch.manual_seed(0)
    anchors = AnchorModule(10, 64, structure=structure)
    z = torch.randn(128, 64, requires_grad=True)
    y = torch.arange(128) % 10
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        group_fit_losses([z], [y], anchors, 1e-3)[0].backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--config", default="configs/digits_fed.yaml")
    args = p.parse_args()
    torch.set_num_threads(2)
    print(f"## {args.config}, {args.rounds} rounds, seed 0")
    print("| covariance | MB per round (sent + received) | test acc_all | test acc_wg |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        rows = {s: federated(args.config, s, args.rounds, out) for s in ("full", "diag", "none")}
    for s, r in rows.items():
        print(
            f"| {s} | {r['MB/round']:.3f} ({r['MB/round'] / rows['full']['MB/round']:.2f}x) | "
            f"{r['acc_all']:.3f} | {r['acc_wg']:.3f} |"
        )
    fit_time("full"), fit_time("diag"), fit_time("none")  # warm up
    t = {s: fit_time(s) for s in ("full", "diag", "none")}
    print("\n## W2 fit forward + backward, batch 128, C = 10, d = 64 (median of 30)")
    for s, v in t.items():
        print(f"- {s}: {1e3 * v:.2f} ms ({t['full'] / v:.1f}x faster than full)")


if __name__ == "__main__":
    main()
