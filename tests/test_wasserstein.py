"""gaussian_w2 against POT and closed forms; finite gradients at S = I."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from fedanchors.anchors import AnchorModule
from fedanchors.moments import batch_class_moments, class_sufficient_stats, stats_to_moments
from fedanchors.wasserstein import gaussian_w2, sqrtm_psd, trace_sqrtm_psd


def random_spd(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, d, generator=g, dtype=torch.float64)
    return a @ a.mT / d + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_matches_pot(d):
    s1, s2 = random_spd(5, d, 0), random_spd(5, d, 1)
    m1 = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    m2 = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = gaussian_w2(m1, s1, m2, s2)
    for i in range(5):
        ref = ot.gaussian.bures_wasserstein_distance(m1[i].numpy(), m2[i].numpy(), s1[i].numpy(), s2[i].numpy())
        assert ours[i].item() == pytest.approx(float(ref) ** 2, rel=1e-6, abs=1e-8)


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    m1, m2, s1, s2 = 0.3, -1.2, 2.0, 0.5
    got = gaussian_w2(torch.tensor([m1]), torch.tensor([[s1**2]]), torch.tensor([m2]), torch.tensor([[s2**2]]))
    assert got.item() == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-5)


def test_commuting_covariances():
    # diagonal S1, S2 commute: cross term is sum sqrt(a_i b_i), so W2^2 = |dm|^2 + sum (sqrt a - sqrt b)^2
    a, b = torch.tensor([1.0, 4.0, 9.0, 0.25]), torch.tensor([2.0, 1.0, 16.0, 1.0])
    m1, m2 = torch.tensor([1.0, 0.0, 2.0, -1.0]), torch.zeros(4)
    got = gaussian_w2(m1, torch.diag(a), m2, torch.diag(b))
    want = float(((m1 - m2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_identical_gaussians_are_zero():
    s = random_spd(3, 8, 4)
    m = torch.randn(3, 8, dtype=torch.float64)
    assert torch.allclose(gaussian_w2(m, s, m, s), torch.zeros(3, dtype=torch.float64), atol=1e-9)


def test_batched_broadcast_matches_loop():
    s1, s2 = random_spd(4, 6, 5), random_spd(3, 6, 6)
    m1, m2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    full = gaussian_w2(m1[:, None], s1[:, None], m2[None], s2[None])  # (4, 3)
    for i in range(4):
        for j in range(3):
            assert full[i, j].item() == pytest.approx(gaussian_w2(m1[i], s1[i], m2[j], s2[j]).item(), rel=1e-9)


def test_gradients_finite_at_identity():
    # the anchors' starting point: every eigenvalue equal (POT's torch backend gives NaN here)
    anchors = AnchorModule(10, 16, eps=1e-4)
    target_m = torch.zeros(10, 16)
    target_s = torch.eye(16).repeat(10, 1, 1)
    loss = gaussian_w2(anchors.means, anchors.covariances(), target_m, target_s).sum()
    loss.backward()
    assert torch.isfinite(anchors.means.grad).all() and torch.isfinite(anchors.factors.grad).all()
    s = torch.eye(5, dtype=torch.float64, requires_grad=True)
    (sqrtm_psd(s).sum() + trace_sqrtm_psd(s)).backward()
    assert torch.isfinite(s.grad).all()


def test_sqrtm_psd_value_and_gradient():
    s = random_spd(2, 5, 7).requires_grad_(True)
    r = sqrtm_psd(s)
    assert torch.allclose(r @ r, s, atol=1e-9)
    # eigh reads one triangle, so check through a symmetric parameterisation
    sym = lambda x: 0.5 * (x + x.mT)  # noqa: E731
    assert torch.autograd.gradcheck(lambda x: sqrtm_psd(sym(x)), (s,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda x: trace_sqrtm_psd(sym(x)), (s,), eps=1e-6, atol=1e-5)
    # at the identity: d tr(sqrt(S)) / dS = 1/2 I exactly
    eye = torch.eye(4, dtype=torch.float64, requires_grad=True)
    trace_sqrtm_psd(eye).backward()
    assert torch.allclose(eye.grad, 0.5 * torch.eye(4, dtype=torch.float64))


def test_gaussian_w2_gradcheck_random():
    s1, s2 = random_spd(2, 4, 8).requires_grad_(True), random_spd(2, 4, 9)
    m1 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    m2 = torch.randn(2, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: gaussian_w2(a, 0.5 * (b + b.mT), m2, s2), (m1, s1), atol=1e-5)


def test_batch_moments_skip_absent_and_single_sample():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 3])
    classes, means, covs = batch_class_moments(z, y, 5, cov_eps=1e-3)
    assert classes.tolist() == [0, 3]
    assert torch.allclose(means, torch.tensor([[2.0, 3.0], [5.0, 0.0]]))
    assert torch.allclose(covs[0], torch.tensor([[1.0, 1.0], [1.0, 1.0]]) + 1e-3 * torch.eye(2))
    assert torch.allclose(covs[1], 1e-3 * torch.eye(2))  # single sample: eps I, not NaN
    covs.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_sufficient_stats_match_numpy():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(50, 3)), rng.integers(0, 4, 50)
    parts = [class_sufficient_stats(torch.tensor(z[i : i + 20]), torch.tensor(y[i : i + 20]), 4) for i in (0, 20, 40)]
    summed = [sum(p[k] for p in parts) for k in range(3)]
    means, covs = stats_to_moments(*summed, cov_eps=0.0)
    for c in range(4):
        zc = z[y == c]
        assert np.allclose(means[c].numpy(), zc.mean(0), atol=1e-5)
        assert np.allclose(covs[c].numpy(), np.cov(zc.T, bias=True), atol=1e-5)
    assert not math.isnan(float(covs.sum()))
