"""Populations of 10, 100 and 1,000 clients with the same work per round, in one run.

    python bench/bench_scale.py [--rounds 8] [--sizes 10,100,1000] [--engine ray|inprocess] [--config C]

    python bench/bench_scale.py --engine inprocess --config configs/scale_10k_fed.yaml --sizes 10,100,1000,10000

    python bench/bench_scale.py --engine inprocess --config configs/scale_10k_fed.yaml --sizes 10,100,1000,10000 \
        --set optim.batch_size=1

The data is fixed, so a client of 10 holds ~1,470 images and one of 10,000 one or two: with
the config's batches of 32, a round of 10 clients trains on 32 images a step and one of
10,000 clients on one or two. ``--set optim.batch_size=1`` makes the work equal: every
sampled client, in every population, takes its ``local_steps`` steps of one image each, so
what differs between populations is only what the population itself costs.

Each population is ``configs/scale_1000_fed.yaml`` (or ``--config``: 10,000 clients need
FEMNIST's images, ``configs/scale_10k_fed.yaml``) with ``federated.clients`` set to half of
it per group (two groups), 10 clients sampled per round (stratified), the
same local steps and batch size; each runs in a fresh process on Flower's Ray engine (or the
in-process one, ``--engine inprocess``: the same driver and ClientApp, messages in memory). It
prints per population: the setup time (engine start to the first round: Ray, the clients'
data, the setup query), the median time of rounds 2..R-1 (the last round also evaluates
every client), the final evaluation of every client, and the peak resident memory of the
whole process tree (driver, Ray, its workers), sampled every 0.2 s. The per-round ratio to
the smallest population is the figure to read: the cost of a round must follow the sampled
work, not the population.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant (from /proc)."""
    from server.reaper import descendants

    total = 0
    for pid in [root, *descendants(root)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def timed_trainer(base: type, marks: dict[str, float], stamps: list[float]) -> type:
    """``base`` (the federated trainer) recording when setup ends, each round's end and the
    time spent evaluating."""

    class Timed(base):
        def setup(self) -> None:
            super().setup()
            marks["setup_done"] = time.perf_counter()

        def end(self, t: int):
            stamps.append(time.perf_counter())
            return super().end(t)

        def evaluate(self, splits):
            t0 = time.perf_counter()
            out = super().evaluate(splits)
            marks["eval_s"] = marks.get("eval_s", 0.0) + time.perf_counter() - t0
            return out

    return Timed


def child(
    size: int, rounds: int, engine: str = "ray", config: str = "configs/scale_1000_fed.yaml", extra: tuple = ()
) -> None:
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
    from server.simulation import _actor_pool_cap
    from server.strategy import FedAnchors

    sets = [f"federated.clients={size // 2}", f"federated.rounds={rounds}", "federated.clients_per_round=10"]
    sets += ["progress=false", *extra]
    cfg = load_config(REPO / config, sets)
    data = build_data(cfg.data)
    n = population_size(cfg.federated, data, cfg.seed)
    marks: dict[str, float] = {}
    stamps: list[float] = []
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(os.getpid()))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    app = ServerApp()
    Timed = timed_trainer(FederatedTrainer, marks, stamps)

    @app.main()
    def main(grid, context):
        run_loop(Timed(cfg, grid, FedAnchors(cfg, n, data.num_classes)), cfg, None, test_with_val=True)

    f = cfg.federated
    if engine == "inprocess":
        from server.memory import MemoryGrid

        marks["start"] = time.perf_counter()
        main(MemoryGrid(make_client_app(cfg), n), None)
        done.set()
        return _report(n, marks, stamps, peak[0])
    backend = {
        "client_resources": {"num_cpus": f.num_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False},
    }
    marks["start"] = time.perf_counter()
    with _actor_pool_cap(n):
        run_simulation(app, make_client_app(cfg), num_supernodes=n, backend_name="ray", backend_config=backend)
    done.set()
    _report(n, marks, stamps, peak[0])


def _report(n: int, marks: dict[str, float], stamps: list[float], peak: int) -> None:
    rounds_s = [b - a for a, b in zip(stamps[:-1], stamps[1:])][:-1]  # rounds 2..R-1
    out = {"clients": n, "setup_s": marks["setup_done"] - marks["start"], "round_s": statistics.median(rounds_s)}
    print(json.dumps(out | {"eval_s": marks.get("eval_s", 0.0), "peak_mb": peak / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--child", type=int, default=0)
    p.add_argument("--engine", default="ray", choices=["ray", "inprocess"])
    p.add_argument("--config", default="configs/scale_1000_fed.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = p.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if args.child:
        return child(args.child, args.rounds, args.engine, args.config, tuple(args.sets))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(size),
                "--rounds",
                str(args.rounds),
                "--engine",
                args.engine,
                "--config",
                args.config,
                *[x for kv in args.sets for x in ("--set", kv)],
            ],  # fmt: skip
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    sets = f", {' '.join(args.sets)}" if args.sets else ""
    print(f"## Populations ({args.engine} engine{sets}), 10 sampled a round, median of rounds 2..{args.rounds - 1}")
    print("| clients | setup (s) | s/round | vs smallest | final evaluation, all clients (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['setup_s']:.1f} | {r['round_s']:.3f} | {r['round_s'] / base['round_s']:.2f}x "
            f"| {r['eval_s']:.1f} | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
