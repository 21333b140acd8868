"""The cost of secure aggregation per round, measured side by side in one run.

    python bench/bench_secagg.py [--rounds 8] [--clients 10] [--config configs/digits_fed.yaml]

The config under client-level privacy (central noise, a fixed noise multiplier), every
client every round, ``--clients`` clients per group, evaluation only after the last round;
once with ``privacy.secure_aggregation`` off and once on (threshold 3), each in a fresh
process on Flower's Ray engine. It prints the median time of rounds 2..R-1, the bytes on
the wire per round (sent + received, keys, ciphertexts and shares included) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(config: str, clients: int, rounds: int, secure: bool) -> None:
    from bench.bench_scale import timed_trainer
    from server.simulation import _quiet

    _quiet()
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from fedanchors.configure import load_config
    from fedanchors.loop import run_loop
    from fedanchors.population import population_size
    from fedanchors.runs import build_data
    from server.driver import FederatedTrainer
    from server.strategy import FedAnchors

    sets = [
        f"federated.clients={clients}", f"federated.rounds={rounds}", "federated.eval_every=1000", "progress=false",
        "federated.num_cpus=0.5", "privacy.enabled=true", "privacy.noise_multiplier=1.0", "privacy.seeded_noise=true",
        f"privacy.secure_aggregation={str(secure).lower()}", "privacy.secagg_threshold=3",
    ]  # fmt: skip
    cfg = load_config(REPO / config, sets)
    data = build_data(cfg.data)
    n = population_size(cfg.federated, data, cfg.seed)
    marks: dict[str, float] = {}
    stamps: list[float] = []
    app = ServerApp()
    Timed = timed_trainer(FederatedTrainer, marks, stamps)
    servers = []

    @app.main()
    def main(grid, context):
        servers.append(FedAnchors(cfg, n, data.num_classes))
        run_loop(Timed(cfg, grid, servers[0]), cfg, None, test_with_val=True)

    backend = {
        "client_resources": {"num_cpus": cfg.federated.num_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False},
    }
    marks["start"] = time.perf_counter()
    run_simulation(app, make_client_app(cfg), num_supernodes=n, backend_name="ray", backend_config=backend)
    s = servers[0]
    rounds_s = [b - a for a, b in zip(stamps[:-1], stamps[1:])][:-1]  # rounds 2..R-1 (the last evaluates)
    out = {"secure": secure, "clients": n, "round_s": statistics.median(rounds_s)}
    print(json.dumps(out | {"mb_per_round": (s.bytes_sent + s.bytes_received) / 1e6 / rounds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--config", default="configs/digits_fed.yaml")
    p.add_argument("--child", choices=["plain", "secure"], default=None)
    args = p.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if args.child:
        return child(args.config, args.clients, args.rounds, args.child == "secure")
    rows = {}
    for kind in ("plain", "secure"):
        cmd = [sys.executable, __file__, "--child", kind, "--rounds", str(args.rounds), "--clients", str(args.clients),
               "--config", args.config]  # fmt: skip
        out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
        rows[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    a, b = rows["plain"], rows["secure"]
    print(f"{a['clients']} clients, all every round, {args.rounds} rounds ({args.config}, privacy central)")
    print("| | s/round (median, rounds 2..R-1) | MB per round |")
    print("|---|---|---|")
    print(f"| privacy, no secure aggregation | {a['round_s']:.3f} | {a['mb_per_round']:.2f} |")
    print(f"| privacy + secure aggregation | {b['round_s']:.3f} | {b['mb_per_round']:.2f} |")
    print(f"| ratio | **{b['round_s'] / a['round_s']:.2f}x** | {b['mb_per_round'] / a['mb_per_round']:.3f}x |")


if __name__ == "__main__":
    main()
