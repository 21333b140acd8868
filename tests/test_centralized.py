"""The centralized trainer on real data: determinism, run files, accuracy targets."""

from __future__ import annotations

import json

import pytest
import torch

from fedanchors.configure import load_config
from fedanchors.simulate import run

from .conftest import REPO, small_config


def test_same_seed_same_metrics(tmp_path):
    cfg = small_config(tmp_path, optim={"epochs": 2, "batch_size": 64})
    a, b = run(cfg), run(cfg)
    assert a["run_dir"] != b["run_dir"]
    la = (tmp_path / "runs" / "t" / "metrics.jsonl").read_text()
    lb = (tmp_path / "runs" / "t-2" / "metrics.jsonl").read_text()
    assert la == lb and json.loads(la.splitlines()[-1])["epoch"] == 2
    assert {k: v for k, v in a.items() if k.startswith("test_")} == {
        k: v for k, v in b.items() if k.startswith("test_")
    }
    c = run(small_config(tmp_path, seed=1, optim={"epochs": 2, "batch_size": 64}))
    assert (tmp_path / "runs" / "t-3" / "metrics.jsonl").read_text() != la
    assert c["run_dir"].endswith("t-3")


def test_run_directory_contents(tmp_path):
    s = run(small_config(tmp_path, optim={"epochs": 2}))
    d = tmp_path / "runs" / "t"
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"}
    rec = json.loads((d / "metrics.jsonl").read_text().splitlines()[0])
    for key in (
        "acc_all",
        "acc_wg",
        "acc_bal",
        "acc_group:digits8",
        "acc_group:digits16",
        "loss_group:digits8",
        "q:digits8",
        "fit",
        "sep",
    ):
        assert key in rec, key
    state = torch.load(d / "checkpoints" / "best.pt", weights_only=True)
    assert "model" in state and s["device"] == "cpu"
    assert load_config(d / "config.yaml").optim.epochs == 2


@pytest.mark.slow
def test_digits_default_reaches_target(tmp_path, figures):
    """The README's first command: test acc_wg >= 0.90 on the embedded default, its figures written."""
    cfg = load_config(REPO / "configs" / "digits.yaml", [f"out_dir={tmp_path}", "progress=false"])
    assert run(cfg)["test_acc_wg"] >= 0.90
    assert sorted(p.name for p in (tmp_path / "digits").glob("*.png")) == [
        "plots.png", "samples_digits16.png", "samples_digits8.png"
    ]  # fmt: skip


@pytest.mark.slow
def test_mnist_hetero_real_data(tmp_path, shared_data):
    """The pixel-size study on the shared MNIST files (4 of the config's 8 epochs, to keep CI short)."""
    cfg = load_config(
        REPO / "configs" / "mnist_hetero.yaml",
        [f"out_dir={tmp_path}", "progress=false", f"data.root={shared_data}", "optim.epochs=4"],
    )
    s = run(cfg)
    assert s["test_acc_wg"] >= 0.94, s


@pytest.mark.slow
def test_anchors_pull_image_and_audio_classes_together(tmp_path, shared_data):
    """Same seed, lambda_fit > 0 vs 0: the groups' class Gaussians end up closer in W2."""
    from fedanchors.analysis import cross_group_w2
    from fedanchors.centralized import CentralizedTrainer
    from fedanchors.data import build_scenario

    sets = [
        f"data.root={shared_data}",
        "data.max_per_group=900",
        "optim.epochs=3",
        "progress=false",
        f"out_dir={tmp_path}",
        "model.encoder.channels=[16,32]",
        "model.encoder.hidden=128",
    ]
    w2 = {}
    for fit in (0.0, 0.01):
        cfg = load_config(REPO / "configs" / "mnist_audio.yaml", sets + [f"anchors.lambda_fit={fit}"])
        data = build_scenario(cfg.data)
        tr = CentralizedTrainer(cfg, data)
        for epoch in range(cfg.optim.epochs):
            for idx in tr.epoch_batches():
                tr.train_step(idx, epoch)
        w2[fit] = cross_group_w2(dict(tr.model.encoders), data)["w2:image|audio"]
    assert w2[0.01] < 0.5 * w2[0.0], w2


def test_eta_per_epoch_and_what_each_part_moved(tmp_path):
    """method.eta_unit epoch: a batch's q step is eta * batch / N; each epoch's record says how
    far the head and every encoder moved (move:*), all of them here since every encoder trains."""
    from fedanchors import groupdro
    from fedanchors.centralized import CentralizedTrainer
    from fedanchors.data import build_scenario

    cfg = small_config(tmp_path, method={"name": "groupdro", "eta": 2.0, "eta_unit": "epoch"}, optim={"epochs": 1})
    tr = CentralizedTrainer(cfg, build_scenario(cfg.data))
    idx = tr.epoch_batches()[0]
    q0 = tr.method.q.clone()
    tr.train_step(idx, 0)
    assert tr.method.rate == pytest.approx(len(idx) / len(tr.owner)) and tr.method.rate < 0.5
    owner = tr.owner[idx]
    assert bool((torch.bincount(owner, minlength=len(q0)) > 0).all())
    # the step's losses are not kept: check the rate's effect on the q step against eta = 2 directly
    losses = torch.tensor([1.0, 2.0, 0.5][: len(q0)], dtype=torch.float64)
    tr.method.q = q0.clone()
    tr.method.step(losses, 0)
    want = groupdro.update_q(q0, losses, 2.0 * tr.method.rate, "exp")
    assert torch.allclose(tr.method.q, want) and not torch.allclose(want, groupdro.update_q(q0, losses, 2.0, "exp"))
    rec = tr.train(1)
    assert rec["move:head"] > 0 and all(rec[f"move:enc:{s}"] > 0 for s in tr.model.encoders)


def test_cosine_schedule_sets_each_epochs_rate(tmp_path):
    """optim.schedule cosine: epoch t of T trains at lr (1 + cos(pi (t - 1) / T)) / 2; constant
    keeps optim.lr. A function of t alone: a resumed epoch gets the same rate."""
    import math

    from fedanchors.centralized import CentralizedTrainer
    from fedanchors.config import OptimConfig
    from fedanchors.data import build_scenario
    from fedanchors.train import lr_at

    opt = OptimConfig(lr=0.2, schedule="cosine")
    rates = [lr_at(opt, t, 4) for t in range(1, 5)]
    assert rates == pytest.approx([0.2, 0.1 * (1 + math.cos(math.pi / 4)), 0.1, 0.1 * (1 + math.cos(3 * math.pi / 4))])
    assert all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert lr_at(OptimConfig(lr=0.2), 3, 4) == 0.2 and lr_at(opt, 9, 4) == rates[-1]  # past the budget: the last
    cfg = small_config(tmp_path, optim={"epochs": 4, "lr": 0.2, "schedule": "cosine"}, data={"max_per_group": 60})
    tr = CentralizedTrainer(cfg, build_scenario(cfg.data))
    seen = []
    for t in (1, 3):
        tr.train(t)
        seen.append(tr.opt.param_groups[0]["lr"])
    assert seen == pytest.approx([rates[0], rates[2]])
