"""Issue 10: hostile checkpoints, silent wrong results, two writers, one-line errors.

Every test here would fail on the code before the fix: a crafted checkpoint ran code on
--resume, a diverged run exited 0 with a summary, a lost group gave acc_wg over the others.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedanchors.config import save_config
from fedanchors.configure import load_config
from fedanchors.errors import Diverged, RunFailed
from fedanchors.rundir import RunDir
from server.strategy import FedAnchors

from .conftest import REPO, small_config
from .flower_harness import InProcessGrid, run_rounds
from .test_config import assert_one_line_error, cli


class _Hostile:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _centralized_run_dir(tmp_path: Path) -> Path:
    """A finished-looking centralized run directory without summary (config + resume.pt)."""
    cfg = small_config(tmp_path, optim={"epochs": 3})
    run = RunDir.create(cfg)
    run.release()
    return run.path


def _federated_run_dir(tmp_path: Path, rounds: int = 2) -> tuple[Path, list[int]]:
    """A federated run directory written by the real strategy and ClientApp (in process, no Ray)."""
    cfg = small_config(tmp_path, mode="federated", federated={"rounds": rounds + 2})
    run = RunDir.create(cfg)
    run_rounds(cfg, 2, run=run, rounds=rounds)
    run.release()
    for done in ("summary.json", "checkpoints/last_server.pt"):  # as if killed after round ``rounds``
        (run.path / done).unlink()
    state = torch.load(run.path / "checkpoints" / "server_resume.pt", weights_only=True)
    return run.path, state["client_rounds"]  # the client state files a resume reads


def _listing(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- security -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["centralized", "federated"])
def test_hostile_checkpoint_runs_no_code(tmp_path, mode):
    marker = tmp_path / "pwned"
    if mode == "centralized":
        run = _centralized_run_dir(tmp_path)
        torch.save({"trainer": _Hostile(marker), "epoch": 1}, run / "checkpoints" / "resume.pt")
        name = "resume.pt"
    else:
        run, _ = _federated_run_dir(tmp_path)
        torch.save({"round": _Hostile(marker)}, run / "checkpoints" / "server_resume.pt")
        name = "server_resume.pt"
    # the same pickle does run code under a plain torch.load: the test would catch a regression
    assert not marker.exists()
    before = _listing(run)
    assert_one_line_error(cli("--resume", str(run)), name, "cannot be read safely")
    assert not marker.exists()
    assert _listing(run) == before  # nothing in the run directory lost or changed


def test_hostile_client_state_file_runs_no_code(tmp_path):
    run, rounds = _federated_run_dir(tmp_path)
    marker = tmp_path / "pwned"
    victim = run / "clients" / "1" / f"r{rounds[1]}.pt"
    torch.save({"encoder": _Hostile(marker)}, victim)
    assert_one_line_error(cli("--resume", str(run)), str(victim), "client 1")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "/abs/path", "../../../x", "a/b", ".."])
def test_run_name_is_a_name(tmp_path, name):
    res = cli("--set", f"name={name}", "--set", f"out_dir={tmp_path}/runs")
    assert_one_line_error(res, "name:", "plain name")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


# -- silent wrong results -------------------------------------------------------------------


def test_divergence_stops_centralized_with_exit_3(tmp_path):
    res = cli("--set", "optim.lr=100", "--set", "optim.epochs=3", "--set", f"out_dir={tmp_path}", "--set", "name=d")
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: training diverged:") and "epoch 1" in lines[-1] and "optim.lr" in lines[-1]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "d" / "summary.json").exists()


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from fedanchors import centralized
    from fedanchors.data import build_scenario

    cfg = small_config(tmp_path, optim={"epochs": 4})
    data = build_scenario(cfg.data)
    run = RunDir.create(cfg)
    original = centralized.CentralizedTrainer.train_step

    def poisoned(self, idx, epoch):
        out = original(self, idx, epoch)
        if epoch == 2:  # the third epoch: its loss goes NaN
            out["loss"] = float("nan")
            self.check(out, f"epoch {epoch + 1}")
        return out

    monkeypatch.setattr(centralized.CentralizedTrainer, "train_step", poisoned)
    with pytest.raises(Diverged, match="loss is nan in epoch 3"):
        centralized.run_centralized(cfg, data, run)
    state = torch.load(run.checkpoint("resume.pt"), weights_only=True)
    assert state["epoch"] == 2  # the last good epoch's checkpoint is kept
    assert not (run.path / "summary.json").exists()
    assert [json.loads(x)["epoch"] for x in (run.path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    run.release()


def test_federated_divergence_stops_before_the_checkpoint(tmp_path):
    cfg = small_config(tmp_path, mode="federated", optim={"lr": 100.0}, federated={"rounds": 4})
    run = RunDir.create(cfg)
    with pytest.raises(Diverged, match=r"round \d"):
        run_rounds(cfg, 2, run=run)
    saved = run.path / "checkpoints" / "server_resume.pt"
    if saved.exists():  # a round before the divergence: its state is finite
        state = torch.load(saved, weights_only=True)
        assert all(bool(torch.isfinite(v).all()) for v in state["head"].values())
    assert not (run.path / "summary.json").exists()
    run.release()


def test_a_client_back_after_a_missed_round_counts(tmp_path):
    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 3, "fault_partition": 1, "fault_round": 1})
    grid = InProcessGrid(cfg, 2)
    strategy = FedAnchors(cfg, 2, 10)
    strategy.discover(grid)
    strategy.aggregate_train(1, grid.send_and_receive(strategy.configure_train(1)))
    assert math.isnan(float(strategy.last_losses[1]))  # client 1 missed round 1
    msgs = strategy.configure_train(2)
    assert float(strategy.weights[1]) == pytest.approx(float(strategy.method.q[1])) and float(strategy.weights[1]) > 0.4
    # client 1 alone answers round 2: it carries the whole update (this raised before)
    only = [r for r in grid.send_and_receive(msgs) if strategy._partition(r) == 1]
    head_before = {k: v.clone() for k, v in strategy.head.state_dict().items()}
    strategy.aggregate_train(2, only)
    assert any(not torch.equal(head_before[k], v) for k, v in strategy.head.state_dict().items())
    assert not math.isnan(float(strategy.last_losses[1])) and not math.isnan(float(strategy.last_losses[0]))


def test_lost_group_never_yields_a_partial_worst_group(tmp_path):
    cfg = small_config(
        tmp_path,
        mode="federated",
        federated={"rounds": 6, "fault_partition": 1, "fault_round": 2, "fault_rounds": 10, "max_missing_rounds": 2},
    )
    run = RunDir.create(cfg)
    with pytest.raises(RunFailed, match=r"digits16 \(client 1\) gave no reply for 2 rounds"):
        run_rounds(cfg, 2, run=run)
    recs = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2, 3]
    assert recs[0]["eval_complete"] and recs[0]["acc_wg"] is not None
    for r in recs[1:]:  # digits16 missing: no worst group, no overall accuracy
        assert r["eval_complete"] is False and r["acc_wg"] is None and r["acc_all"] is None
        assert r["acc_group:digits16"] is None and r["acc_group:digits8"] is not None
    state = torch.load(run.path / "checkpoints" / "server_resume.pt", weights_only=True)
    assert state["best_t"] == 1  # an incomplete round is never the best
    run.release()


def test_resume_refuses_a_missing_or_corrupt_client_state_file(tmp_path):
    run, rounds = _federated_run_dir(tmp_path)
    victim = run / "clients" / "0" / f"r{rounds[0]}.pt"
    blob = victim.read_bytes()
    victim.unlink()
    assert_one_line_error(cli("--resume", str(run)), str(victim), "missing")
    victim.write_bytes(blob[: len(blob) // 2])
    assert_one_line_error(cli("--resume", str(run)), str(victim), "cannot be read safely")


def test_resume_names_a_private_clients_state_file_without_its_encoder(tmp_path):
    """One client per group keeps a private encoder, which only its state file holds: a file
    whose encoder is None (as a shared space's client writes) is refused by name when the
    client loads it, not replaced by a fresh encoder."""
    run, rounds = _federated_run_dir(tmp_path)
    victim = run / "clients" / "1" / f"r{rounds[1]}.pt"
    state = torch.load(victim, weights_only=True)
    assert set(state) == {"encoder", "opt"} and state["encoder"] is not None
    state["encoder"] = None
    torch.save(state, victim)
    assert_one_line_error(cli("--resume", str(run)), "client state lost:", str(victim), "no encoder")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_client_whose_state_is_lost_mid_run_stops_the_run(tmp_path, damage):
    """Not skipped like a failed client: it would fail every later round and silently leave
    the population. The error names the round and the file."""
    from fedanchors.errors import FedAnchorsError
    from server.driver import FederatedTrainer

    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 4, "local_steps": 1})
    grid = InProcessGrid(cfg, 2, str(tmp_path / "clients"))
    server = FedAnchors(cfg, 2, 10)
    trainer = FederatedTrainer(cfg, grid, server)
    trainer.setup()
    trainer.train(1)
    victim = tmp_path / "clients" / "1" / "r1.pt"
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(FedAnchorsError) as err:
        trainer.train(2)
    msg = str(err.value)
    assert msg.startswith("round 2: client state lost:") and str(victim) in msg and "\n" not in msg
    assert "missing" in msg if damage == "delete" else "cannot be loaded" in msg


# -- two writers ----------------------------------------------------------------------------


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    cfg = small_config(tmp_path, optim={"epochs": 40, "batch_size": 32}, data={"max_per_group": 300})
    save_config(cfg, tmp_path / "c.yaml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedanchors.simulate", "--config", str(tmp_path / "c.yaml"), "--set", "name=busy"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "runs" / "busy"
    try:
        t0 = time.time()
        while not (run / "checkpoints" / "resume.pt").exists():
            assert proc.poll() is None and time.time() - t0 < 300
            time.sleep(0.05)
        assert_one_line_error(cli("--resume", str(run)), "in use by process", str(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs))  # no epoch written twice
    # the holder is gone: the lock went with it, and a resume may now take the directory
    from fedanchors.rundir import RunLock

    RunLock(run).release()


# -- one-line errors ------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\x80\x81\x00\xff" * 8, b"{}" * 3, b"\x00" * 10])
@pytest.mark.parametrize("which", ["resume.pt", "server_resume.pt"])
def test_corrupt_checkpoints_are_one_line(tmp_path, content, which):
    if which == "resume.pt":
        run = _centralized_run_dir(tmp_path)
    else:
        run, _ = _federated_run_dir(tmp_path)
    (run / "checkpoints" / which).write_bytes(content)
    before = _listing(run)
    assert_one_line_error(cli("--resume", str(run)), which)
    assert _listing(run) == before


@pytest.mark.parametrize("which", ["resume.pt", "server_resume.pt"])
def test_wrongly_structured_checkpoints_are_one_line(tmp_path, which):
    run = _centralized_run_dir(tmp_path) if which == "resume.pt" else _federated_run_dir(tmp_path)[0]
    torch.save({"epoch": 1, "round": 1, "weights": torch.zeros(3)}, run / "checkpoints" / which)
    assert_one_line_error(cli("--resume", str(run)), which, "lacks")
    torch.save([1, 2, 3], run / "checkpoints" / which)
    assert_one_line_error(cli("--resume", str(run)), which, "not a mapping")


def test_truncated_real_checkpoint_is_one_line(tmp_path):
    run, _ = _federated_run_dir(tmp_path)
    ckpt = run / "checkpoints" / "server_resume.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    assert_one_line_error(cli("--resume", str(run)), "server_resume.pt", "cannot be read safely")


def test_empty_and_binary_config_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert_one_line_error(cli("--config", str(empty)), "empty")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(gzip.compress(b"optim: {lr: 1}"))
    assert_one_line_error(cli("--config", str(binary)), "not UTF-8")


@pytest.mark.parametrize("key", ["optim.epochs=0", "federated.rounds=0", "federated.round_timeout=0"])
def test_ranges_are_checked_at_load(tmp_path, key):
    assert_one_line_error(cli("--set", key, "--set", f"out_dir={tmp_path}"), key.split("=")[0], "must be > 0")
    assert not any(tmp_path.iterdir())


def test_exponent_floats_in_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  weight_decay: 1E-5\nfederated:\n  round_timeout: 1e+3\n")
    cfg = load_config(path, ["anchors.lambda_fit=2e-4", "anchors.eps=1E-6"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 1e-5 and cfg.federated.round_timeout == 1000.0
    assert cfg.anchors.lambda_fit == 2e-4 and cfg.anchors.eps == 1e-6
    assert load_config(None, ["optim.lr=.5"]).optim.lr == 0.5
    # a text field keeps its text: a sweep point's hash such as 5e123 is a name, not a float
    assert load_config(None, ["name=5e123"]).name == "5e123"
    assert load_config(None, ["name=1e5", "data.scenario=digits"]).name == "1e5"


def test_set_value_that_is_not_yaml_is_rejected():
    assert_one_line_error(cli("--set", "model.encoder.channels=[8, 16"), "not valid YAML")
    assert_one_line_error(cli("--set", "=3"), "empty key")


def test_ray_init_keywords_are_checked_before_ray(tmp_path):
    t0 = time.time()
    res = cli(
        "--config",
        "configs/digits_fed.yaml",
        "--set",
        "federated.ray_init={num_cpu: 2}",
        "--set",
        f"out_dir={tmp_path}",
    )
    assert_one_line_error(res, "federated.ray_init.num_cpu", "num_cpus")
    assert time.time() - t0 < 120 and not any(tmp_path.iterdir())


def test_cuda_without_gpu_in_federated_mode_makes_no_run_dir(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    res = cli("--config", "configs/digits_fed.yaml", "--set", "device=cuda", "--set", f"out_dir={tmp_path}/runs")
    assert_one_line_error(res, "device", "no CUDA GPU")
    assert not (tmp_path / "runs").exists()


def test_labels_outside_the_classes_name_the_file(tmp_path, shared_data):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    src = shared_data / "mnist" / "MNIST" / "raw"
    images = next(p for p in src.iterdir() if p.name.startswith("t10k-images"))
    labels = next(p for p in src.iterdir() if p.name.startswith("t10k-labels"))
    shutil.copy(images, raw / images.name)
    data = bytearray(gzip.decompress(labels.read_bytes()) if labels.suffix == ".gz" else labels.read_bytes())
    data[8 + 17] = 12  # one label that is not a digit
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    res = cli(
        "--config", "configs/mnist_hetero.yaml", "--set", f"data.root={tmp_path}", "--set", f"out_dir={tmp_path}/r"
    )
    assert_one_line_error(res, "t10k-labels-idx1-ubyte", "label 12", "0..9")
    assert not (tmp_path / "r").exists()


def test_fault_partition_out_of_range(tmp_path):
    res = cli(
        "--config", "configs/digits_fed.yaml", "--set", "federated.fault_partition=5", "--set", f"out_dir={tmp_path}"
    )
    assert_one_line_error(res, "federated.fault_partition=5", "0..1")
    assert not any(tmp_path.iterdir())
