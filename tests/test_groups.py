"""Majority / minority groups: their sources' exact construction, Waterbirds loader, fixed-ratio batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedanchors.centralized import CentralizedTrainer
from fedanchors.config import DataConfig, to_dict
from fedanchors.configure import from_dict
from fedanchors.data import build_scenario
from fedanchors.data.mnist import mnist_pool
from fedanchors.data.sources.mnist_lt import longtail_counts
from fedanchors.data.spurious import colour_environment
from fedanchors.data.transforms import dot_mask
from fedanchors.errors import DataError
from fedanchors.metrics import summarize
from tests.conftest import data_config, named_groups, small_config
from tests.fixtures import make_waterbirds
from tests.test_config import assert_one_line_error, cli


def test_colour_environment_rates_are_exact(shared_data):
    x, digits = mnist_pool(DataConfig(root=str(shared_data)))
    x, digits = x[:3001], digits[:3001]
    for agreement in (0.9, 0.8, 0.1):
        img, label, colour = colour_environment(x, digits, agreement, 0.25, seed=3)
        n = len(digits)
        assert int((label != (digits < 5).long()).sum()) == round(0.25 * n)  # label noise
        assert int((colour == label).sum()) == round(agreement * n)  # colour agreement
        rows = torch.arange(n)
        assert torch.equal(img[rows, colour], x[:, 0, ::2, ::2])  # the digit sits in its colour's channel
        assert float(img[rows, 1 - colour].abs().sum()) == 0.0  # the other channel is empty


def test_colored_mnist_groups(shared_data):
    cfg = DataConfig(scenario="colored_mnist", root=str(shared_data))
    data = build_scenario(cfg)
    assert data.names == ["red_y0", "red_y1", "green_y0", "green_y1"] and data.num_classes == 2
    assert len(data.spaces()) == 1  # one input space, one shared encoder
    n_pool = len(mnist_pool(cfg)[1])
    n_test = round(0.2 * n_pool)
    n_env = round(0.4 * n_pool)
    majority_train = sum(len(g.train) + len(g.val) for g in data.groups if g.meta["majority"])
    assert majority_train == round(0.9 * n_env) + round(0.8 * n_env)
    assert sum(len(g.test) for g in data.groups if g.meta["majority"]) == round(0.1 * n_test)
    for g in data.groups:
        colour, label = ("red", "green").index(g.name.split("_")[0]), int(g.name[-1])
        for split in (g.train, g.val, g.test):
            assert bool((split.y == label).all())
            assert float(split.x[:, 1 - colour].abs().sum()) == 0.0 and float(split.x[:, colour].sum()) > 0


def test_confounded_mnist_dots_and_correction(shared_data):
    cfg = DataConfig(scenario="confounded_mnist", root=str(shared_data))  # 100 corrected images
    data = build_scenario(cfg)
    conf, corr = data.groups
    mask = dot_mask(28, 6, 2, 0)
    assert int(mask.sum()) == 6 * 4
    eights = conf.train.y == 8
    assert bool((conf.train.x[eights][:, 0, mask] == 1).all())  # every confounded 8 carries the dots
    dotted = (conf.train.x[~eights][:, 0, mask] == 1).all(1)
    assert int(dotted.sum()) == 0  # no other class does
    assert len(corr.train) == 100 and bool((corr.train.y == 8).all())
    assert bool((corr.train.x[:, 0, mask] == 0).all())  # the correction zeroes the masked pixels
    assert bool((corr.test.y == 8).all()) and not bool((conf.test.y == 8).any())
    for g in data.groups:  # validation and test are clean MNIST
        for split in (g.val, g.test):
            assert int((split.x[:, 0, mask] == 1).all(1).sum()) == 0
    assert data.class_sets == {"class8": [8]}


def test_mnist_lt_counts_follow_the_profile(shared_data):
    cfg = DataConfig(scenario="mnist_lt", root=str(shared_data))  # imbalance 100, head classes 0-4
    data = build_scenario(cfg)
    head, tail = data.groups
    counts = torch.bincount(torch.cat([head.train.y, tail.train.y]), minlength=10).tolist()
    assert counts == longtail_counts(counts[0], 10, 100)
    assert counts[0] / counts[9] == pytest.approx(100, rel=0.1)  # within rounding of the factor
    assert set(head.train.y.tolist()) == set(range(5)) and set(tail.train.y.tolist()) == set(range(5, 10))
    test_counts = torch.bincount(torch.cat([head.test.y, tail.test.y]), minlength=10)
    assert int(test_counts.max()) < 1.5 * int(test_counts.min())  # test stays balanced
    assert longtail_counts(500, 10, 100) == [500, 300, 180, 108, 65, 39, 23, 14, 8, 5]


def test_class_sets_in_summaries():
    correct = torch.tensor([[5, 0, 3], [0, 2, 1]])
    total = torch.tensor([[10, 0, 4], [0, 4, 2]])
    out = summarize(["a", "b"], correct, total, torch.zeros(2), {"head": [0], "tail": [1, 2]})
    assert out["acc_head"] == pytest.approx(0.5)
    assert out["acc_tail"] == pytest.approx((2 + 3 + 1) / (4 + 4 + 2))


def test_waterbirds_loader_on_its_fixture(tmp_path):
    root = make_waterbirds(tmp_path, per_cell=2)
    data = build_scenario(data_config(named_groups("waterbirds", size=16), root=str(root)))
    assert data.names == ["landbird_land", "landbird_water", "waterbird_land", "waterbird_water"]
    for k, g in enumerate(data.groups):
        bird = k // 2
        assert g.space == "rgb" and g.shape == (3, 16, 16)
        assert (len(g.train), len(g.val), len(g.test)) == (2, 2, 2)
        assert bool((g.train.y == bird).all())
    # the fixture paints water-backed images blue and land-backed ones green
    water, land = data.groups[1].train.x, data.groups[0].train.x
    assert float(water[:, 2].mean()) > float(land[:, 2].mean())


def test_waterbirds_bad_folders_give_one_line_errors(tmp_path):
    root = make_waterbirds(tmp_path, per_cell=1)
    (root / "waterbird_complete95_forest2water2" / "metadata.csv").unlink()
    res = cli("--set", "data.scenario=waterbirds", "--set", f"data.root={root}", "--set", f"out_dir={tmp_path / 'r'}")
    assert_one_line_error(res, "metadata.csv", str(root))
    assert not (tmp_path / "r").exists()  # nothing half-made


def test_waterbirds_corrupt_image_is_named(tmp_path):
    root = make_waterbirds(tmp_path, per_cell=1)
    bad = next((root / "waterbird_complete95_forest2water2").rglob("*.jpg"))
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=bad.name):
        build_scenario(DataConfig(scenario="waterbirds", root=str(root)))


def test_waterbirds_trains_a_resnet18(tmp_path):
    root = make_waterbirds(tmp_path, per_cell=3)
    raw = to_dict(small_config(tmp_path))
    raw["data"] = {"groups": named_groups("waterbirds", size=32), "root": str(root)}
    raw["model"]["encoder"] = {"kind": "resnet18"}
    raw["optim"].update(epochs=2, batch_size=8)
    tr = CentralizedTrainer(from_dict(raw), build_scenario(from_dict(raw).data))
    before = [p.detach().clone() for p in tr.model.encoders["rgb"].parameters()]
    for idx in tr.epoch_batches():
        assert np.isfinite(tr.train_step(idx, 0)["loss"])
    after = list(tr.model.encoders["rgb"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert set(tr.metrics("test")) >= {"acc_wg", "acc_group:waterbird_land"}


def test_fixed_ratio_batches(shared_data, tmp_path):
    raw = to_dict(small_config(tmp_path))
    raw["data"] = {"scenario": "confounded_mnist", "root": str(shared_data)}
    raw["optim"]["group_batch"] = {"confounded": 60, "corrected": 4}
    cfg = from_dict(raw)
    data = build_scenario(cfg.data)
    tr = CentralizedTrainer(cfg, data)
    batches = tr.epoch_batches()
    assert len(batches) == -(-len(data.groups[0].train) // 60)
    seen_corrected = torch.cat([b[tr.owner[b] == 1] for b in batches])
    for b in batches:
        assert torch.bincount(tr.owner[b], minlength=2).tolist() == [60, 4]
    # the corrected pool cycles: every one of its 100 images is used before any repeats
    assert len(set(seen_corrected[:100].tolist())) == 100
    confounded = torch.cat([b[tr.owner[b] == 0] for b in batches])
    assert len(set(confounded.tolist())) == len(data.groups[0].train)  # one pass over the big group


def test_dfr_head_folds_the_standardisation():
    from sklearn.linear_model import LogisticRegression

    from fedanchors.dfr import L1, fit_logreg

    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5)) * [1, 10, 0.1, 3, 1] + [0, 5, -2, 0, 1]
    y = (z[:, 0] + 0.1 * z[:, 1] > 0.5).astype(int)
    W, b = fit_logreg(z, y, 1.0, 3, seed=0)
    mean, std = z.mean(0), z.std(0) + 1e-6
    ref = LogisticRegression(C=1.0, solver="liblinear", random_state=0, **L1).fit((z - mean) / std, y)
    logits = z @ W.T + b
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref.decision_function((z - mean) / std), atol=1e-6)
    assert bool((logits.argmax(1) != 2).all())  # a class never seen is never predicted


def test_dfr_balancing_and_gaussian_draws():
    from fedanchors.dfr import balanced_indices, gaussian_codes

    groups = np.array([0] * 50 + [1] * 7 + [2] * 20)
    idx = balanced_indices(groups, np.random.default_rng(0))
    assert np.bincount(groups[idx]).tolist() == [7, 7, 7] and len(set(idx.tolist())) == 21
    counts = torch.tensor([[30.0, 10.0, 0.0], [0.0, 5.0, 5.0]])
    means = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 5
    covs = torch.eye(4).expand(2, 3, 4, 4) * 0.01
    z, y, g = gaussian_codes(counts, means, covs, per_group=400, seed=1)
    assert np.bincount(g).tolist() == [400, 400]  # group-balanced
    assert np.bincount(y[g == 0], minlength=3).tolist() == [300, 100, 0]  # class shares of the group
    np.testing.assert_allclose(z[(g == 1) & (y == 2)].mean(0), means[1, 2].numpy(), atol=0.03)


def test_dfr_raises_worst_group_accuracy_of_erm_on_colored_mnist(shared_data, tmp_path):
    """The point of DFR: ERM leans on colour; a head refit on group-balanced codes does less."""
    from fedanchors.centralized import run_centralized
    from fedanchors.rundir import RunDir

    raw = to_dict(small_config(tmp_path))
    raw["data"] = {"scenario": "colored_mnist", "root": str(shared_data)}
    raw["model"]["encoder"] = {"kind": "cnn", "channels": [16, 32], "hidden": 128}
    raw["method"]["name"] = "erm"
    raw["optim"].update(epochs=3, batch_size=256, weight_decay=0.005)
    raw["dfr"] = {"enabled": True}
    cfg = from_dict(raw)
    summary = run_centralized(cfg, build_scenario(cfg.data), RunDir.create(cfg))
    assert summary["test_acc_wg"] < 0.2  # the colour shortcut
    assert summary["dfr_test_acc_wg"] > summary["test_acc_wg"] + 0.2
    assert summary["dfr_C"] in cfg.dfr.Cs
    assert summary[f"dfr_val_wg:C={summary['dfr_C']}"] == max(summary[f"dfr_val_wg:C={c}"] for c in cfg.dfr.Cs)


def test_federated_dfr_from_class_statistics(tmp_path):
    """Server-side DFR: heads fitted on codes drawn from the clients' class Gaussians, each
    evaluated by the clients, C picked on their validation worst-group accuracy."""
    from tests.flower_harness import run_rounds

    cfg = small_config(tmp_path, mode="federated", federated={"rounds": 4}, dfr={"enabled": True, "Cs": [10.0, 0.01]})
    strategy, grid, summary = run_rounds(cfg, 2)
    assert sum(m.metadata.group_id == str(cfg.federated.rounds + 1) for m in grid.sent) == 2 * 2  # one per C, client
    out = summary
    assert out["dfr_C"] == max(cfg.dfr.Cs, key=lambda c: (out[f"dfr_val_wg:C={c}"], -c))
    # this short run leaves the trained head poor; the codes drawn from the class statistics
    # carry the classes, so the refit head does far better (measured 0.55 vs 0.11 at 6 rounds)
    assert out["dfr_test_acc_all"] > summary["test_acc_all"] + 0.1
    assert out["dfr_val_wg:C=0.01"] < out["dfr_val_wg:C=10.0"]  # heavy L1 throws most of it away
