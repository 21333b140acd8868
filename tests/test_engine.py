"""``federated.engine: inprocess``: the same driver and ClientApp, messages in memory (through
the CLI): deterministic, the Ray engine's numbers to float precision, client failures
reported and survived as on Ray, and its one-line config error."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO

FAST = ["data.max_per_group=200", "model.encoder.channels=[8]", "model.encoder.hidden=32", "progress=false"]


def simulate(out, *sets: str) -> subprocess.CompletedProcess:
    args = ["--config", "configs/digits_fed.yaml", "--set", f"out_dir={out}"]
    for s in [*FAST, *sets]:
        args += ["--set", s]
    return subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "digits_fed" / "metrics.jsonl").read_text().splitlines()]


def test_the_inprocess_engine_is_deterministic_and_survives_a_failing_client(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        res = simulate(out, "federated.engine=inprocess", "federated.rounds=2")
        assert res.returncode == 0, res.stderr[-3000:]
    assert records(a) == records(b)  # same seed, same numbers
    assert (
        json.loads((a / "digits_fed" / "summary.json").read_text())["test_acc_wg"]
        == json.loads((b / "digits_fed" / "summary.json").read_text())["test_acc_wg"]
    )
    c = tmp_path / "c"
    res = simulate(c, "federated.engine=inprocess", "federated.rounds=3", "federated.fault_partition=1",
                   "federated.fault_round=2")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "client 1 failed" in res.stderr and "injected fault" in res.stderr
    recs = records(c)
    assert recs[1]["q:digits16"] == recs[0]["q:digits16"] and recs[2]["q:digits16"] != recs[1]["q:digits16"]
    log = (c / "digits_fed" / "client_errors.log").read_text()
    assert "Traceback" in log and "injected fault" in log  # the full traceback, as Ray's error reply carries


def test_ray_init_with_the_inprocess_engine_is_one_line(tmp_path):
    res = simulate(tmp_path, "federated.engine=inprocess", "federated.ray_init={num_cpus: 2}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: federated.ray_init is for the ray engine; leave it empty with federated.engine: inprocess"
    )
    assert not (tmp_path / "digits_fed").exists()


@pytest.mark.slow
def test_the_inprocess_engine_gives_the_ray_engines_first_round(tmp_path):
    """The engines differ only in how messages travel and in the threads each process uses:
    round 1 agrees to float precision (later rounds drift from float-level differences, both
    engines being deterministic)."""
    mem, ray = tmp_path / "mem", tmp_path / "ray"
    for out, engine in ((mem, "inprocess"), (ray, "ray")):
        res = simulate(out, f"federated.engine={engine}", "federated.rounds=1")
        assert res.returncode == 0, res.stderr[-3000:]
    (m,), (r,) = records(mem), records(ray)
    assert set(m) == set(r)
    for k, v in m.items():
        if isinstance(v, float) and not k.startswith("bytes"):
            assert math.isclose(v, r[k], rel_tol=1e-4, abs_tol=1e-6), (k, v, r[k])
        elif not isinstance(v, list):
            assert v == r[k], k
    assert m["bytes_train"] == r["bytes_train"]  # the same messages
