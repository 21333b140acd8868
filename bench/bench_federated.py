"""Federated overheads on the digits config, measured side by side in one run.

    python bench/bench_federated.py [--rounds 10]

1. Wall time of the federated run (configs/digits_fed.yaml, Ray, 2 clients) over the
   centralized run (configs/digits.yaml) with the same seed and sample budget
   (one local epoch per round = one centralized epoch), each in a fresh process.
2. Per-round time of FedAnchors (the federated driver over the shared loop, no run
   directory) over Flower's stock FedAvg (``Strategy.start``), with the same ClientApp,
   clients and Ray resources (median round after the first, Ray start excluded).
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


def whole_run(config: str, rounds: int, out: str, *extra: str) -> float:
    """Wall seconds of ``python -m fedanchors.simulate`` (process start to exit)."""
    sets = [f"optim.epochs={rounds}", f"federated.rounds={rounds}", f"out_dir={out}", "progress=false", *extra]
    cmd = [sys.executable, "-m", "fedanchors.simulate", "--config", config]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def round_times(strategy_name: str, rounds: int) -> list[float]:
    """Seconds per round of ``strategy_name`` (fedanchors | fedavg), from a child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", strategy_name, "--rounds", str(rounds)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(strategy_name: str, rounds: int) -> None:
    from server.simulation import _quiet

    _quiet()
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from clients.client_app import make_client_app
    from clients.protocol import pack
    from fedanchors.configure import load_config
    from fedanchors.loop import run_loop
    from fedanchors.models import build_anchors, build_head
    from server.driver import FederatedTrainer
    from server.strategy import FedAnchors

    cfg = load_config(REPO / "configs" / "digits_fed.yaml", ["progress=false", f"federated.rounds={rounds}"])
    stamps: list[float] = []
    app = ServerApp()

    @app.main()
    def main(grid, context):
        def stamp(rnd, arrays):
            stamps.append(time.perf_counter())

        if strategy_name == "fedanchors":  # the real driver and loop, stamped after each round

            class Timed(FederatedTrainer):
                def end(self, t: int):
                    stamps.append(time.perf_counter())
                    return super().end(t)

            run_loop(Timed(cfg, grid, FedAnchors(cfg, 2, 10)), cfg, None, test_with_val=True)
            return
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)
        a = cfg.anchors
        init = pack(
            head=build_head(cfg.model, 10, cfg.seed).state_dict(),
            anchors=build_anchors(cfg.model.latent_dim, 10, a.eps, a.init_scale, cfg.seed).state_dict(),
        )
        strategy.start(grid, init, num_rounds=rounds, evaluate_fn=stamp)

    f = cfg.federated
    backend = {
        "client_resources": {"num_cpus": f.num_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False},
    }
    run_simulation(app, make_client_app(cfg), num_supernodes=2, backend_name="ray", backend_config=backend)
    print(json.dumps([b - a for a, b in zip(stamps[1:], stamps[2:])]))  # drop round 1 (Ray start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--child", default=None)
    args = p.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if args.child:
        return child(args.child, args.rounds)
    out = "/tmp/fedanchors-bench"
    cen = whole_run("configs/digits.yaml", args.rounds, out)
    fed = whole_run("configs/digits_fed.yaml", args.rounds, out)
    mem = whole_run("configs/digits_fed.yaml", args.rounds, out, "federated.engine=inprocess")
    print(f"## digits, {args.rounds} epochs = {args.rounds} rounds (2 clients, num_cpus=1), whole process")
    print(
        f"| centralized (s) | federated, ray (s) | ray / centralized | federated, inprocess (s) | inprocess / "
        f"centralized |\n|---|---|---|---|---|\n"
        f"| {cen:.1f} | {fed:.1f} | {fed / cen:.2f}x | {mem:.1f} | {mem / cen:.2f}x |"
    )
    fa = round_times("fedanchors", args.rounds)
    fv = round_times("fedavg", args.rounds)
    ma, mv = statistics.median(fa), statistics.median(fv)
    print(f"\n## Per-round time, same ClientApp and clients, median of rounds 2..{args.rounds}")
    print(
        f"| FedAvg (s/round) | FedAnchors (s/round) | FedAnchors / FedAvg |\n|---|---|---|\n"
        f"| {mv:.3f} | {ma:.3f} | {ma / mv:.2f}x |"
    )


if __name__ == "__main__":
    main()
