"""``fedanchors.evaluate`` restores a finished run's model and reproduces its summary; both
modes write metric keys with one definition (they agree where the maths coincide)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from fedanchors.evaluate import evaluate_run
from fedanchors.rundir import RunDir
from fedanchors.simulate import run

from .conftest import REPO, digits_groups, small_config
from .flower_harness import run_rounds


def _same_test_metrics(summary: dict, got: dict) -> None:
    keys = [k for k in summary if k.startswith(("test_acc", "test_loss_group", "test_client_acc"))]
    assert "test_acc_wg" in keys and any(k.startswith("test_acc_group:") for k in keys)
    for k in keys:
        a, b = summary[k], got[k]
        pairs = zip(a, b) if isinstance(a, list) else [(a, b)]  # test_client_accs: one per client
        assert not isinstance(a, list) or len(a) == len(b)
        for x, y in pairs:
            assert (x is None and math.isnan(y)) or x == y, (k, x, y)  # exactly, not approximately


def test_evaluate_reproduces_a_centralized_summary(tmp_path):
    s = run(small_config(tmp_path, optim={"epochs": 4, "lr": 0.1}))
    assert s["best_epoch"] < s["epochs_run"]  # so best and last are two models
    got = evaluate_run(s["run_dir"])
    summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    _same_test_metrics(summary, got)
    assert (tmp_path / "runs" / "t" / "evaluate_best_test.json").is_file()
    last = evaluate_run(s["run_dir"], "test", "last")  # another model: other numbers
    assert last["test_loss_group:digits8"] != got["test_loss_group:digits8"]


def test_evaluate_reproduces_a_federated_summary_from_client_state_files(tmp_path):
    """The best round (before the last) is restored from each client's state file of that
    round, which the clients kept while later rounds dropped the others."""
    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 4, "local_steps": 2})
    rundir = RunDir.create(cfg)
    _, _, summary = run_rounds(cfg, 2, run=rundir)
    rundir.release()
    path = rundir.path
    got = evaluate_run(path)
    _same_test_metrics(json.loads((path / "summary.json").read_text()), got)
    best = torch.load(path / "checkpoints" / "best_server.pt", weights_only=True)
    for pid, rnd in enumerate(best["client_rounds"]):
        assert (path / "clients" / str(pid) / f"r{rnd}.pt").is_file()
    assert summary["best_round"] < summary["rounds_run"] == 4
    assert best["client_rounds"] == [summary["best_round"]] * 2
    kept = sorted(int(p.stem[1:]) for p in (path / "clients" / "0").glob("r*.pt"))
    assert kept == sorted({summary["best_round"], 3, 4})  # the best, and the last round's start and end
    # the CLI prints the same and one line for a bad request
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.evaluate", str(path), "--checkpoint", "newest"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--checkpoint newest" in res.stderr


@pytest.mark.parametrize("damage", ["missing", "no encoder"])
def test_evaluate_names_a_missing_client_state_file(tmp_path, damage):
    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 2})
    rundir = RunDir.create(cfg)
    run_rounds(cfg, 2, run=rundir)
    rundir.release()
    best = torch.load(rundir.path / "checkpoints" / "best_server.pt", weights_only=True)
    victim = rundir.path / "clients" / "1" / f"r{best['client_rounds'][1]}.pt"
    if damage == "missing":
        victim.unlink()
    else:  # a private encoder's file without it (as a shared space's client writes)
        torch.save(torch.load(victim, weights_only=True) | {"encoder": None}, victim)
    res = subprocess.run(
        [sys.executable, "-m", "fedanchors.evaluate", str(rundir.path)], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and str(victim) in res.stderr
    assert damage in res.stderr


@pytest.mark.parametrize("method", ["erm", "groupdro"])
def test_both_modes_write_the_same_metrics_where_the_maths_coincide(tmp_path, method):
    """Shared encoder (both digit groups at one size), anchors off, one full-batch plain SGD
    step per epoch/round: every logged metric of the two modes agrees to 1e-5."""
    common = dict(
        anchors={"lambda_fit": 0.0, "lambda_sep": 0.0},
        method={"name": method, "eta": 1.0},
        optim={"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0},
        data={"max_per_group": 150, "groups": digits_groups(sizes=(8, 8))},
        federated={"rounds": 3, "local_steps": 1},
    )
    common["optim"].update(batch_size=100000, epochs=3)
    central = run(small_config(tmp_path / "c", **common))
    cfg = small_config(tmp_path / "f", mode="federated", **common)
    rundir = RunDir.create(cfg)
    _, _, fed = run_rounds(cfg, 2, run=rundir)
    rundir.release()
    rc = [json.loads(x) for x in (tmp_path / "c" / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    rf = [json.loads(x) for x in (rundir.path / "metrics.jsonl").read_text().splitlines()]
    assert len(rc) == len(rf) == 3
    shared = set(rc[0]) & set(rf[0])
    assert {"loss", "acc_wg", "acc_all", "acc_bal", "loss_group:digits8", "q:digits16"} <= shared
    for a, b in zip(rc, rf):
        for k in sorted(shared - {"epoch", "round"}):
            assert a[k] == pytest.approx(b[k], abs=1e-5), (k, a[k], b[k])
    for k in ("test_acc_wg", "test_acc_all", "test_loss_group:digits16"):
        assert central[k] == pytest.approx(fed[k], abs=1e-5), k


def test_a_client_state_location_comes_from_its_node_then_the_app_then_the_run():
    from flwr.app import Context, RecordDict

    from clients.client_app import state_location

    def ctx(node: dict, run: dict) -> Context:
        return Context(1, 7, {"partition-id": 0, **node}, RecordDict(), run)

    assert state_location(ctx({"state-dir": "/disk/a"}, {"run-dir": "/runs/x"}), "/app") == "/disk/a"
    assert state_location(ctx({}, {"run-dir": "/runs/x"}), "/app") == "/app"
    assert state_location(ctx({}, {"run-dir": "/runs/x"}), None) == "/runs/x/clients"
    assert state_location(ctx({}, {}), None) == ""  # Flower's context.state


def test_private_encoders_per_client_are_restored_and_never_shared(tmp_path):
    """encoder_sharing: client (LG-FedAvg): three clients per group, each with its own encoder
    (none on the server); evaluate restores every client's and reproduces the summary,
    client-level accuracies included."""
    fed = {"rounds": 3, "local_steps": 2, "clients": 3, "partition": "dirichlet", "encoder_sharing": "client"}
    cfg = small_config(tmp_path, mode="federated", federated=fed)
    rundir = RunDir.create(cfg)
    server, grid, summary = run_rounds(cfg, 6, run=rundir)
    rundir.release()
    assert server.encoders == {}  # nothing shared: every encoder stays with its client
    exchanged = [m for m in grid.sent if m.metadata.message_type in ("train", "evaluate")]
    assert exchanged and not any(k.startswith("encoder.") for m in exchanged for k in m.content["global"].keys())
    got = evaluate_run(rundir.path)
    _same_test_metrics(json.loads((rundir.path / "summary.json").read_text()), got)
    assert "test_client_acc_p10" in got
    best = torch.load(rundir.path / "checkpoints" / "best_server.pt", weights_only=True)
    encs = [
        torch.load(rundir.path / "clients" / str(p) / f"r{r}.pt", weights_only=True)["encoder"]
        for p, r in enumerate(best["client_rounds"])
        if p < 3
    ]
    first = next(iter(encs[0]))
    assert not torch.equal(encs[0][first], encs[1][first])  # two clients of one group: two encoders
