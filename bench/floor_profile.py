"""Where a federated run's time goes, from a profile: ``bench/bench_floor.py --breakdown``.

One in-process run (``federated.engine: inprocess``, so a driver-side cProfile sees the
clients too) of a floor workload under cProfile, its time split into what a reader asks
about: data loading, the setup query, local training, the clients' message handling around
it, the server's aggregation, the evaluation, the checkpoints, and, across those, the
serialisation of the messages' arrays. The clients' share includes the first message's
one-time import behind ``torch.use_deterministic_algorithms`` (about 1.5 s; the loop pays it
too). Profiled seconds: cProfile slows Python-heavy code
more than torch's kernels, so the shares overstate the overhead; the ratios of
``bench_floor.py`` are the unprofiled measurement.
"""

from __future__ import annotations

import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (label, [(file suffix, function name)]) summed by cumulative time; "minus" entries subtracted
BUCKETS = [
    ("data loading (build_data)", [("fedanchors/runs.py", "build_data")], []),
    ("setup query of every client", [("server/strategy.py", "discover")], []),
    ("local training (train.local_train)", [("fedanchors/train.py", "local_train")], []),
    (
        "client message handling (models, state files, packing)",
        [("clients/task.py", "train")],
        [("fedanchors/train.py", "local_train")],
    ),
    ("server: reply checks and aggregation", [("server/strategy.py", "aggregate_train")], []),
    ("server: messages out (configure)", [("server/strategy.py", "configure_train")], []),
    ("evaluation (every client, at the end)", [("server/driver.py", "evaluate")], []),
    ("checkpoints (resume state)", [("fedanchors/fileio.py", "save_atomic")], []),
]
SERIAL = [("clients/protocol.py", n) for n in ("pack", "unpack", "pack_arrays", "unpack_arrays")]


def _cum(stats: pstats.Stats, keys: list[tuple[str, str]]) -> float:
    total = 0.0
    for (file, _, name), (_, _, _, ct, _) in stats.stats.items():
        if any(file.endswith(f) and name == n for f, n in keys):
            total += ct
    return total


def breakdown(config: str, rounds: int) -> list[tuple[str, float]]:
    """(label, profiled seconds) of one in-process run of ``config`` for ``rounds`` rounds."""
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FEDANCHORS_PLOTS": "0"}
    with tempfile.TemporaryDirectory() as out:
        prof = Path(out) / "run.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "fedanchors.simulate", "--config", config,
               "--set", f"federated.rounds={rounds}", "--set", f"out_dir={out}", "--set", "progress=false",
               "--set", "federated.engine=inprocess"]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        stats = pstats.Stats(str(prof))
    rows = [(label, _cum(stats, plus) - _cum(stats, minus)) for label, plus, minus in BUCKETS]
    rows.append(("  of which serialisation of arrays (clients.protocol)", _cum(stats, SERIAL)))
    named = sum(v for label, v in rows if not label.startswith("  "))
    rows.append(("the rest (imports, interpreter, the run directory, logging)", wall - named))
    rows.append(("whole process, profiled", wall))
    return rows


def print_breakdown(name: str, config: str, rounds: int) -> None:
    rows = breakdown(config, rounds)
    print(f"\n{name}: where {rounds} in-process rounds go (profiled seconds, cProfile's overhead included)")
    wall = rows[-1][1]
    for label, v in rows:
        print(f"  {label:<62} {v:7.2f} s  {100 * v / wall:5.1f}%")
