"""Real Flower simulations on the Ray backend, through the CLI (slow: Ray starts each time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    assert recs[1]["q:digits8"] != 0.5  # the server's GroupDRO ran on the clients' losses
    summary = json.loads((tmp_path / "digits_fed" / "summary.json").read_text())
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
