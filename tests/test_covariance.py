"""Anchor covariance structures (``anchors.covariance: full | diag | none``): the diagonal
closed forms against the full-covariance functions, means-only fits, what clients send."""

from __future__ import annotations

import pytest
import torch

from fedanchors.aggregate import barycenter_step
from fedanchors.anchors import AnchorModule
from fedanchors.losses import anchor_fit_objective
from fedanchors.moments import batch_class_moments, class_sufficient_stats, pool_moments, stats_to_moments
from fedanchors.wasserstein import diag_w2, gaussian_w2, structured_w2

from .conftest import small_config
from .flower_harness import run_rounds


def _diag_inputs(seed: int = 0, batch: tuple = (5, 7), d: int = 6):
    g = torch.Generator().manual_seed(seed)
    m1, m2 = torch.randn(*batch, d, generator=g, dtype=torch.float64), torch.randn(*batch, d, generator=g).double()
    v1 = torch.rand(*batch, d, generator=g, dtype=torch.float64) * 2 + 0.05
    v2 = torch.rand(*batch, d, generator=g, dtype=torch.float64) * 2 + 0.05
    return m1, v1, m2, v2


def test_diag_w2_equals_the_full_formula_on_diagonal_inputs():
    m1, v1, m2, v2 = _diag_inputs()
    full = gaussian_w2(m1, torch.diag_embed(v1), m2, torch.diag_embed(v2))
    assert torch.allclose(diag_w2(m1, v1, m2, v2), full, rtol=1e-6, atol=1e-9)
    assert torch.allclose(structured_w2(m1, v1, m2, v2), full, rtol=1e-6, atol=1e-9)


def test_diag_w2_gradients_match_the_full_formula():
    m1, v1, m2, v2 = _diag_inputs(1, (4,), 5)
    a = v1.clone().requires_grad_()
    b = v1.clone().requires_grad_()
    diag_w2(m1, a, m2, v2).sum().backward()
    gaussian_w2(m1, torch.diag_embed(b), m2, torch.diag_embed(v2)).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_none_is_the_squared_mean_distance():
    m1, _, m2, _ = _diag_inputs(2)
    empty = m1.new_zeros(*m1.shape[:-1], 0)
    assert torch.allclose(structured_w2(m1, empty, m2, empty), ((m1 - m2) ** 2).sum(-1))
    anchors = AnchorModule(7, 6, structure="none").double()
    counts = torch.ones(5, 7)
    w = torch.full((5,), 0.2, dtype=torch.float64)
    got = anchor_fit_objective(anchors, counts, m2, m2.new_zeros(5, 7, 0), w)
    want = (w[:, None] * ((anchors.means - m2) ** 2).sum(-1)).sum() / 7
    assert torch.allclose(got, want)


def test_diag_barycenter_equals_the_full_barycenter_on_diagonal_inputs():
    _, v, m, _ = _diag_inputs(3, (3, 4), 5)  # 3 groups, 4 classes, d = 5
    counts = torch.tensor([[4.0, 0, 2, 1], [3, 5, 0, 1], [1, 1, 1, 1]])
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    full = AnchorModule(4, 5, eps=1e-4, structure="full").double()
    diag = AnchorModule(4, 5, eps=1e-4, structure="diag").double()
    with torch.no_grad():
        diag.means.copy_(full.means)
    barycenter_step(full, counts, m, torch.diag_embed(v), w)
    barycenter_step(diag, counts, m, v, w)
    assert torch.allclose(diag.means, full.means, atol=1e-9)
    s_full = full.covariances()
    assert torch.allclose(torch.diag_embed(diag.covariances()), s_full, rtol=1e-6, atol=1e-8)
    means_only = AnchorModule(4, 5, structure="none").double()
    barycenter_step(means_only, counts, m, m.new_zeros(3, 4, 0), w)
    assert torch.allclose(means_only.means, full.means, atol=1e-9)


def test_diag_moments_are_the_diagonal_of_the_full_moments():
    g = torch.Generator().manual_seed(4)
    z, y = torch.randn(40, 6, generator=g).double(), torch.randint(0, 3, (40,), generator=g)
    _, mf, cf = batch_class_moments(z, y, 3, 1e-3)
    _, md, vd = batch_class_moments(z, y, 3, 1e-3, "diag")
    assert torch.allclose(md, mf) and torch.allclose(vd, torch.diagonal(cf, dim1=-2, dim2=-1))
    assert batch_class_moments(z, y, 3, 1e-3, "none")[2].shape == (3, 0)
    parts = {}
    for s in ("full", "diag"):
        halves = [class_sufficient_stats(z[i::2], y[i::2], 3, s) for i in (0, 1)]
        parts[s] = [(h[0], *stats_to_moments(*h, 1e-3)) for h in halves]
    n_f, mu_f, cov_f = pool_moments(parts["full"])
    n_d, mu_d, var_d = pool_moments(parts["diag"])
    assert torch.equal(n_f, n_d) and torch.allclose(mu_f, mu_d)
    assert torch.allclose(var_d, torch.diagonal(cov_f, dim1=-2, dim2=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("structure", ["full", "diag", "none"])
def test_clients_send_only_what_the_structure_needs(tmp_path, structure):
    """Two federated rounds of digits: every reply's class statistics hold counts (float64),
    means and the structure's covariances (float32), and nothing else."""
    cfg = small_config(
        tmp_path, mode="federated", anchors={"covariance": structure}, federated={"rounds": 2, "local_steps": 2}
    )
    server, grid, summary = run_rounds(cfg, 2)
    C, d = 10, cfg.model.latent_dim
    cov = {"full": C * d * d, "diag": C * d, "none": 0}[structure]
    train_replies = [m for m in grid.received if "stats" in m.content.array_records]
    assert len(train_replies) == 4
    for m in train_replies:
        stats = m.content.array_records["stats"]
        nbytes = sum(stats[k].numpy().nbytes for k in stats)
        assert nbytes == 8 * C + 4 * C * d + 4 * cov
    assert all(k in summary for k in ("test_acc_wg", "test_acc_all"))
    assert tuple(server.anchors.factors.shape[1:]) == {"full": (d, d), "diag": (d,), "none": (0,)}[structure]


def test_centralized_runs_with_each_structure(tmp_path):
    from fedanchors.centralized import run_centralized
    from fedanchors.data import build_scenario
    from fedanchors.rundir import RunDir

    out = {}
    for s in ("full", "diag", "none"):
        cfg = small_config(
            tmp_path, name=f"c_{s}", anchors={"covariance": s, "update": "barycenter"}, optim={"epochs": 8, "lr": 0.01}
        )
        data = build_scenario(cfg.data)
        summary = run_centralized(cfg, data, RunDir.create(cfg))
        out[s] = summary["test_acc_all"]
    assert min(out.values()) > 0.5, out  # chance is 0.1
