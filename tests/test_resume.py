"""Checkpoint/resume: a run killed with SIGKILL and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedanchors.config import save_config
from tests.conftest import REPO, small_config
from tests.test_config import assert_one_line_error, cli

VOLATILE = ("wall_time_s", "run_dir")


def _start(config: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedanchors.simulate", "--config", str(config), "--set", f"name={name}", *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes Ray's processes too
    )


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _wait_for(run: Path, key: str, value: int, proc: subprocess.Popen, limit: float = 300) -> None:
    t0 = time.time()
    while not any(r.get(key, 0) >= value for r in _records(run)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < limit, "the run never got there"
        time.sleep(0.05)


def _finished(run: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    records = [{k: v for k, v in r.items() if k not in VOLATILE} for r in _records(run)]
    return {k: v for k, v in summary.items() if k not in VOLATILE}, records


def _kill(config: Path, runs: Path, name: str, key: str, at: int, sig: int = signal.SIGKILL) -> subprocess.Popen:
    """Start a run, and once it has logged ``key`` >= ``at`` send it ``sig``."""
    proc = _start(config, name)
    _wait_for(runs / name, key, at, proc)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    assert not (runs / name / "summary.json").exists()  # it really stopped mid-run
    return proc


@pytest.fixture(scope="module")
def centralized(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("central")
    cfg = small_config(tmp, optim={"epochs": 8, "batch_size": 32}, data={"max_per_group": 300})
    save_config(cfg, tmp / "c.yaml")
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.simulate", "--config", str(tmp / "c.yaml"), "--set", "name=reference"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return tmp / "c.yaml", tmp / "runs"


@pytest.mark.slow
def test_centralized_resume_after_sigkill_is_exact(centralized):
    config, runs = centralized
    proc = _kill(config, runs, "killed", "epoch", 3)
    assert proc.returncode == -signal.SIGKILL
    res = cli("--resume", str(runs / "killed"))
    assert res.returncode == 0, res.stderr
    assert _finished(runs / "killed") == _finished(runs / "reference")


@pytest.mark.slow
def test_ctrl_c_stops_after_a_checkpoint_and_resumes_exactly(centralized):
    config, runs = centralized
    proc = _kill(config, runs, "stopped", "epoch", 2, sig=signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "checkpoint written" in err and "--resume" in err and "Traceback" not in err
    done = max(r["epoch"] for r in _records(runs / "stopped"))
    assert (runs / "stopped" / "checkpoints" / "resume.pt").is_file() and done < 8
    assert cli("--resume", str(runs / "stopped")).returncode == 0
    assert _finished(runs / "stopped") == _finished(runs / "reference")


@pytest.mark.slow
def test_federated_resume_after_sigkill_is_exact(tmp_path):
    # with the gap-analysis study's gap dynamics on: a round's record waits for the next round's losses,
    # and that pending record survives the kill
    analysis = {"gap_dynamics": True, "gradient_basis": True}
    cfg = small_config(
        tmp_path, mode="federated", federated={"rounds": 6}, data={"max_per_group": 300}, analysis=analysis
    )
    save_config(cfg, tmp_path / "f.yaml")
    runs = tmp_path / "runs"
    ref = _start(tmp_path / "f.yaml", "reference")
    assert ref.wait(timeout=600) == 0, ref.communicate()
    _kill(tmp_path / "f.yaml", runs, "killed", "round", 3)
    clients = sorted(p.name for p in (runs / "killed" / "clients").iterdir())
    assert clients == ["0", "1"]  # each client's private state is in the run directory
    res = cli("--resume", str(runs / "killed"))
    assert res.returncode == 0, res.stderr
    a, b = _finished(runs / "killed"), _finished(runs / "reference")
    assert a == b
    ref_analysis = (runs / "reference" / "analysis.jsonl").read_text()
    assert [json.loads(x)["round"] for x in ref_analysis.splitlines()] == [1, 2, 3, 4, 5, 6]
    assert (runs / "killed" / "analysis.jsonl").read_text() == ref_analysis


def test_resume_refuses_a_different_config_or_a_broken_directory(centralized, tmp_path):
    config, runs = centralized
    ref = runs / "reference"
    assert_one_line_error(cli("--resume", str(ref), "--set", "optim.lr=0.5"), "different config", "optim.lr")
    assert_one_line_error(cli("--resume", str(ref)), "finished")
    broken = tmp_path / "broken"
    broken.mkdir()
    assert_one_line_error(cli("--resume", str(broken)), "no config.yaml")
    (broken / "config.yaml").write_text((ref / "config.yaml").read_text())
    assert_one_line_error(cli("--resume", str(broken)), "resume.pt")
    assert sorted(p.name for p in broken.iterdir()) == ["config.yaml"]  # nothing lost or added


@pytest.mark.slow
def test_federated_resume_with_a_server_optimizer_is_exact(tmp_path):
    """FedAdam's moments, reset client optimizers and first-step group losses survive a SIGKILL;
    two clients per group share their space's encoder, which only the server keeps. On the
    in-process engine (the test above kills a Ray run): its resume is exact too."""
    fed = {"rounds": 5, "server_opt": "adam", "server_lr": 0.01, "local_steps": 3, "group_loss": "first"}
    fed |= {"reset_client_opt": True, "clients": 2, "engine": "inprocess"}
    cfg = small_config(
        tmp_path, mode="federated", federated=fed, optim={"name": "sgd", "lr": 0.1}, data={"max_per_group": 300}
    )
    save_config(cfg, tmp_path / "f.yaml")
    runs = tmp_path / "runs"
    ref = _start(tmp_path / "f.yaml", "reference")
    assert ref.wait(timeout=600) == 0, ref.communicate()
    _kill(tmp_path / "f.yaml", runs, "killed", "round", 3)
    import torch

    state = torch.load(runs / "killed" / "checkpoints" / "server_resume.pt", weights_only=True)
    assert state["server_opt"]["m"] and state["server_opt"]["v"]  # the moments are checkpointed
    assert len(state["encoders"]) == 2  # both spaces shared
    for f in (runs / "killed" / "clients").glob("*/r*.pt"):
        assert torch.load(f, weights_only=True)["encoder"] is None  # the server's copy is the one
    res = cli("--resume", str(runs / "killed"))
    assert res.returncode == 0, res.stderr
    assert _finished(runs / "killed") == _finished(runs / "reference")
