"""Real Flower simulations on the Ray backend, through the CLI (slow: Ray starts each time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.reaper import _stat, descendants

from .conftest import REPO

pytestmark = pytest.mark.slow

FAST = ["--set", "data.max_per_group=200", "--set", "model.encoder.channels=[8]", "--set", "model.encoder.hidden=32"]


def simulate(tmp_path, *sets: str) -> subprocess.CompletedProcess:
    args = ["--config", "configs/digits_fed.yaml", "--set", f"out_dir={tmp_path}", "--set", "progress=false", *FAST]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "digits_fed" / "metrics.jsonl").read_text().splitlines()]


def test_ray_simulation_two_clients_two_rounds(tmp_path):
    res = simulate(tmp_path, "federated.rounds=2")
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(tmp_path)
    assert [r["round"] for r in recs] == [1, 2]
    for r in recs:
        assert {"acc_all", "acc_wg", "acc_bal", "acc_group:digits8", "acc_group:digits16", "q:digits8"} <= set(r)
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0
        assert 0 < r["bytes_train"] < r["bytes_sent"] + r["bytes_received"]  # each record's round also evaluated
    assert recs[1]["q:digits8"] != 0.5  # the server's GroupDRO ran on the clients' losses
    summary = json.loads((tmp_path / "digits_fed" / "summary.json").read_text())
    assert summary["bytes_train"] == sum(r["bytes_train"] for r in recs)  # the final test is evaluation
    assert summary["mode"] == "federated" and 0 <= summary["test_acc_wg"] <= 1
    assert (tmp_path / "digits_fed" / "config.yaml").is_file()


def test_client_failure_in_round_two_does_not_stop_the_run(tmp_path):
    res = simulate(tmp_path, "federated.rounds=3", "federated.fault_partition=1", "federated.fault_round=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "client 1 failed" in res.stderr and "injected fault" in res.stderr
    recs = records(tmp_path)
    assert [r["round"] for r in recs] == [1, 2, 3]
    assert recs[1]["q:digits16"] == recs[0]["q:digits16"]  # the missing group's q is unchanged
    assert recs[2]["q:digits16"] != recs[1]["q:digits16"]  # and it is back in round 3


def test_below_min_clients_stops_with_one_line(tmp_path):
    res = simulate(
        tmp_path,
        "federated.rounds=3",
        "federated.fault_partition=0",
        "federated.fault_round=1",
        "federated.min_clients=2",
    )
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: round 1: 1 client replies, fewer than federated.min_clients=2")
    assert "Traceback" not in res.stderr
    assert (tmp_path / "digits_fed" / "config.yaml").is_file()  # what was written is kept
    assert "injected fault" in (tmp_path / "digits_fed" / "client_errors.log").read_text()


def test_a_client_state_file_lost_mid_run_stops_with_one_line(tmp_path):
    """Through Ray: client 0's state files vanish as soon as they are written, so one round
    finds the file it must start from gone; the run stops naming it instead of going on
    without that client."""
    proc = _start(tmp_path, "federated.rounds=30")
    state = tmp_path / "digits_fed" / "clients" / "0"
    t0 = time.time()
    while proc.poll() is None:
        assert time.time() - t0 < 300, "the run never stopped"
        for f in state.glob("r*.pt"):
            f.unlink(missing_ok=True)
        time.sleep(0.02)
    err = proc.stderr.read()
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: round ") and "client state lost:" in last, last
    assert str(state) in last and "restore it" in last and "Traceback" not in err
    assert (tmp_path / "digits_fed" / "config.yaml").is_file()  # what was written is kept


def _start(tmp_path, *sets: str) -> subprocess.Popen:
    args = ["--config", "configs/digits_fed.yaml", "--set", f"out_dir={tmp_path}", "--set", "progress=false", *FAST]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(
        [sys.executable, "-m", "fedanchors.simulate", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_round(tmp_path, rnd: int, proc: subprocess.Popen) -> None:
    path = tmp_path / "digits_fed" / "metrics.jsonl"
    t0 = time.time()
    while not (path.is_file() and any(json.loads(x)["round"] >= rnd for x in path.read_text().splitlines())):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.1)


def _actors(root: int) -> list[int]:
    """The Ray client actors among ``root``'s descendants."""
    return [p for p in descendants(root) if b"ClientAppActor" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_killed_ray_worker_is_restarted_and_every_round_stays_complete(tmp_path):
    # num_cpus 0.5 would give Flower a pool of 4 actors for 2 clients: capped at 2
    proc = _start(tmp_path, "federated.rounds=6", "federated.num_cpus=0.5")
    _wait_round(tmp_path, 2, proc)
    actors = _actors(proc.pid)
    assert len(actors) == 2, actors
    os.kill(actors[0], signal.SIGKILL)  # a Ray worker dies mid-run
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    recs = records(tmp_path)
    assert [r["round"] for r in recs] == [1, 2, 3, 4, 5, 6]
    for r in recs:  # the killed client was restarted and answered: no partial round
        assert r["eval_complete"] and r["acc_wg"] is not None and r["acc_group:digits16"] is not None


def test_ray_processes_end_with_a_killed_driver(tmp_path):
    proc = _start(tmp_path, "federated.rounds=50")
    _wait_round(tmp_path, 1, proc)
    ours = descendants(proc.pid)
    assert len(_actors(proc.pid)) == 2
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, not its process group
    proc.wait(timeout=60)
    t0 = time.time()
    while True:
        alive = [p for p, start in ours.items() if (s := _stat(p)) is not None and s[1] == start]
        if not alive or time.time() - t0 > 30:
            break
        time.sleep(0.5)
    assert not alive, f"still running 30 s after the driver was killed: {alive}"


def test_simulation_engine_failure_is_one_line_and_prompt(tmp_path):
    t0 = time.time()
    res = simulate(tmp_path, "federated.ray_init={object_store_memory: 1}")
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the Flower simulation engine failed:") and "object store memory" in last
    assert "Traceback" not in res.stderr
    assert time.time() - t0 < 120  # not round_timeout (600 s)


def test_a_group_that_stays_away_ends_the_run_with_exit_4(tmp_path):
    res = simulate(
        tmp_path,
        "federated.rounds=6",
        "federated.fault_partition=1",
        "federated.fault_round=2",
        "federated.fault_rounds=10",
        "federated.max_missing_rounds=2",
    )
    assert res.returncode == 4, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith("error: digits16 (client 1) gave no reply for 2 rounds")
    assert not (tmp_path / "digits_fed" / "summary.json").exists()
    assert [r["acc_wg"] is None for r in records(tmp_path)] == [False, True, True]


def test_federated_divergence_exits_3_without_a_summary(tmp_path):
    res = simulate(tmp_path, "federated.rounds=4", "optim.lr=100")
    assert res.returncode == 3, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged:") and " in round " in last and "Traceback" not in res.stderr
    assert not (tmp_path / "digits_fed" / "summary.json").exists()


def test_ray_population_of_ten_clients_three_sampled_per_round(tmp_path):
    """2 groups x 5 clients (Dirichlet label skew), 3 sampled per round, on Ray."""
    res = simulate(
        tmp_path,
        "federated.rounds=3",
        "federated.clients=5",
        "federated.partition=dirichlet",
        "federated.clients_per_round=3",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(tmp_path)
    assert [r["round"] for r in recs] == [1, 2, 3] and all(r["eval_complete"] for r in recs)
    state = (tmp_path / "digits_fed" / "clients").iterdir()
    trained = sorted(int(p.name) for p in state)
    assert 3 <= len(trained) <= 9 and set(trained) <= set(range(10))  # only sampled clients kept state
    summary = json.loads((tmp_path / "digits_fed" / "summary.json").read_text())
    assert 0 <= summary["test_acc_wg"] <= 1
