"""The gap analyses: the gradient-flow prediction of each group's loss change against the
observed change (both modes), the basis maths, Jacobian norms, and the run files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fedanchors import dynamics
from fedanchors.centralized import CentralizedTrainer
from fedanchors.data import build_scenario
from fedanchors.loop import run_loop
from fedanchors.resume import JsonlLog
from fedanchors.rundir import RunDir
from tests.conftest import small_config
from tests.flower_harness import run_rounds, train_rounds

GROUPS = [
    {"name": "majority", "source": "uci_digits", "fraction": 0.8},
    {"name": "minority", "source": "uci_digits", "fraction": 0.2, "classes": [0, 1, 2, 3, 4]},
]


def tiny(tmp_path, method: str, **extra):
    """Two groups in one input space (one shared encoder: every parameter is shared), full
    batch, plain SGD with a small step: the regime where gradient flow predicts one step."""
    sections = dict(
        data={"scenario": "", "groups": GROUPS, "max_per_group": 0},
        model={"latent_dim": 8, "encoder": {"kind": "mlp", "hidden": 16, "channels": [8]}},
        anchors={"lambda_fit": 0.0, "lambda_sep": 0.0},
        method={"name": method, "eta": 1.0},
        optim={"name": "sgd", "lr": 0.02, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0,
               "batch_size": 100000, "epochs": 1},
        federated={"rounds": 2, "local_steps": 1},
        analysis={"gradient_basis": True, "gap_dynamics": True, "at": [1], "max_examples": 0},
    )  # fmt: skip
    for k, v in extra.items():
        sections[k] = sections.get(k, {}) | v if isinstance(v, dict) else v
    return small_config(tmp_path, **sections)


@pytest.mark.parametrize("method", ["erm", "iw", "groupdro"])
def test_predicted_loss_change_matches_the_observed_one(tmp_path, method):
    cfg = tiny(tmp_path, method)
    # centralized: the epoch is one full-batch SGD step on sum_h p_h L_h
    tr = CentralizedTrainer(cfg, build_scenario(cfg.data))
    tr.train(1)
    (rec,) = tr.analysis_out
    lr = cfg.optim.lr
    weights = [rec[f"weight:{g}"] for g in ("majority", "minority")]
    want = {"erm": [0.8 / 0.9, 0.1 / 0.9], "iw": [0.5, 0.5], "groupdro": [0.5, 0.5]}[method]  # minority: half of 20%
    assert weights == pytest.approx(want, abs=0.02)
    for g in ("majority", "minority"):
        pred, obs = lr * rec[f"pred_rate:{g}"], rec[f"obs_epoch_change:{g}"]
        assert abs(pred - obs) <= 0.05 * abs(obs), (g, pred, obs)
        assert abs(rec[f"obs_rate:{g}"] - rec[f"pred_rate:{g}"]) <= 0.05 * abs(rec[f"obs_rate:{g}"])  # the probe
    # federated (one local SGD step on each client's whole split): the server's gradients are the clients'
    server, _ = train_rounds(cfg, 2)
    (fed,) = server.analysis.out
    for g in ("majority", "minority"):
        assert fed[f"weight:{g}"] == pytest.approx(rec[f"weight:{g}"], rel=1e-6)
        assert fed[f"pred_rate:{g}"] == pytest.approx(rec[f"pred_rate:{g}"], rel=1e-4)  # same init, same K
        pred, obs = fed[f"pred_rate:{g}"], fed[f"obs_rate:{g}"]
        assert abs(pred - obs) <= 0.05 * abs(obs), (g, pred, obs)
    assert fed["K:majority|minority"] == pytest.approx(rec["K:majority|minority"], rel=1e-4)
    assert fed["pred_gap_rate"] == pytest.approx(rec["pred_gap_rate"], rel=1e-4)


def test_basis_maths():
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    out = dynamics.basis(G, torch.ones(3, dtype=torch.bool), ["a", "b", "c"])
    assert out["cos:a|b"] == 0.0 and out["cos:a|c"] == pytest.approx(3 / 5)
    assert out["span_other:c"] == pytest.approx(1.0)  # c = 3a + 2b
    assert out["span_other:a"] == pytest.approx(1.0)  # a is in span(b, c)
    assert out["sv"] == pytest.approx(torch.linalg.svdvals(G).tolist(), abs=1e-9)
    G2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    assert dynamics.basis(G2, torch.ones(3, dtype=torch.bool), ["a", "b", "c"])["span_other:c"] == 0.0
    # private parts (not shared) add only to the diagonal
    out = dynamics.basis(G, torch.tensor([True, True, False]), ["a", "b", "c"])
    assert out["private_norm:a"] == 0.0 and out["shared_norm:c"] == pytest.approx(5.0)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert torch.allclose(dynamics.rates(G @ G.T, p), -(G @ G.T) @ p)


def test_jacobian_norm_of_a_linear_map():
    torch.manual_seed(0)
    lin = nn.Linear(20, 7)
    est = dynamics.jacobian_norm(lin, torch.randn(64, 20), 400, torch.Generator().manual_seed(0))
    assert est == pytest.approx(float(lin.weight.detach().norm()), rel=0.05)


def test_analysis_files_in_both_modes(tmp_path):
    cfg = tiny(tmp_path, "groupdro", analysis={"static_dynamic": True, "jacobian": True, "at": [1, 3]},
               optim={"epochs": 3}, federated={"rounds": 3}, anchors={"lambda_fit": 0.001})  # fmt: skip
    data = build_scenario(cfg.data)
    run = RunDir.create(cfg)
    run_loop(CentralizedTrainer(cfg, data), cfg, run)
    recs = dynamics.read_analysis(run.path)
    assert [r["epoch"] for r in recs] == [1, 3]
    r = recs[0]
    assert r["dynamic_gap"] == pytest.approx(r["model_gap"] - r["static_gap"])
    assert r["jac_enc:majority"] > 0 and r["jac_head:minority"] > 0 and len(r["sv"]) == 2
    assert dynamics.plot_analysis(run.path).is_file()
    run.release()
    fcfg = tiny(tmp_path, "groupdro", analysis={"static_dynamic": True, "jacobian": True, "at": [1, 3]},
                federated={"rounds": 3}, anchors={"lambda_fit": 0.001}, mode="federated")  # fmt: skip
    frun = RunDir.create(fcfg)
    run_rounds(fcfg, 2, run=frun)
    recs = [json.loads(x) for x in (frun.path / "analysis.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 3]
    assert "obs_rate:majority" in recs[0] and "obs_rate:majority" not in recs[1]  # the last round has no next
    assert recs[0]["jac_enc:minority"] > 0 and "static_gap" in recs[0]
    frun.release()


def test_analysis_log_resumes_to_the_lines_written_before_the_checkpoint(tmp_path):
    log = JsonlLog(tmp_path / "analysis.jsonl")
    log.write([{"round": 1, "a": 1.0}, {"round": 2, "a": 2.0}])
    at_checkpoint = log.count  # round 3's checkpoint: rounds 1 and 2 written (2 completed in round 3)
    log.write([{"round": 3, "a": 3.0}])  # written in round 4, after round 3's checkpoint
    again = JsonlLog(tmp_path / "analysis.jsonl")
    again.truncate("round", 3, at_checkpoint)
    assert [r["round"] for r in dynamics.read_analysis(tmp_path)] == [1, 2] and again.count == 2
    again.truncate("round", 1)  # an older checkpoint without the count: by step
    assert [r["round"] for r in dynamics.read_analysis(tmp_path)] == [1]
