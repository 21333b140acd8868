"""Bures-Wasserstein distance between Gaussians, batched, with safe gradients.

W2^2(N(m1,S1), N(m2,S2)) = |m1-m2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2
(Dowson & Landau 1982; Givens & Shortt 1984).

The eigendecomposition's generic backward divides by eigenvalue gaps (lambda_i -
lambda_j), which is 0/0 = NaN when eigenvalues repeat, as they do at S = I where the
anchors start (POT issue 773). For f = sqrt the divided difference has the closed form
(sqrt l_i - sqrt l_j) / (l_i - l_j) = 1 / (sqrt l_i + sqrt l_j), finite at l_i = l_j, so
the Daleckii-Krein backward below needs no gap at all.
"""

from __future__ import annotations

import torch

_FLOOR = 1e-12  # eigenvalue floor: keeps 1/sqrt finite for singular PSD input


class _SqrtmPSD(torch.autograd.Function):
    """Symmetric PSD square root via eigh; backward by Daleckii-Krein with 1/(s_i+s_j)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        lam, u = torch.linalg.eigh(a)
        s = lam.clamp_min(0).sqrt()
        ctx.save_for_backward(u, s)
        return (u * s.unsqueeze(-2)) @ u.mT

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        u, s = ctx.saved_tensors
        gs = u.mT @ (0.5 * (g + g.mT)) @ u
        k = 1.0 / (s.unsqueeze(-1) + s.unsqueeze(-2)).clamp_min(_FLOOR**0.5)
        return u @ (gs * k) @ u.mT


class _TraceSqrtmPSD(torch.autograd.Function):
    """tr(A^1/2) = sum sqrt(lambda_i(A)); gradient 1/2 A^-1/2 (no eigenvalue gaps)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        lam, u = torch.linalg.eigh(a)
        lam = lam.clamp_min(_FLOOR)
        ctx.save_for_backward(u, lam)
        return lam.sqrt().sum(-1)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        u, lam = ctx.saved_tensors
        d = 0.5 / lam.sqrt() * g.unsqueeze(-1)
        return (u * d.unsqueeze(-2)) @ u.mT


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Principal square root of symmetric PSD ``a`` (..., d, d); finite grads at repeats."""
    return _SqrtmPSD.apply(a)


def trace_sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """tr(a^1/2) for symmetric PSD ``a`` (..., d, d) -> (...)."""
    return _TraceSqrtmPSD.apply(a)


def _factor(s: torch.Tensor) -> torch.Tensor:
    """A matrix F with F F^T = s: Cholesky where s is PD, else the PSD square root."""
    chol, info = torch.linalg.cholesky_ex(s)
    if bool((info == 0).all()):
        return chol
    return sqrtm_psd(s)


def gaussian_w2(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between N(m1, s1) and N(m2, s2).

    Shapes: means (..., d), covariances (..., d, d), broadcast over leading dims;
    returns (...). The cross term uses tr((F^T s2 F)^1/2) with F F^T = s1 (a Cholesky
    factor): F^T s2 F has the eigenvalues of s1 s2, as does s1^1/2 s2 s1^1/2, so one
    Cholesky and one eigendecomposition per pair replace two eigendecompositions.
    """
    f = _factor(s1)
    cross = trace_sqrtm_psd(f.mT @ s2 @ f)
    tr = torch.diagonal(s1, dim1=-2, dim2=-1).sum(-1) + torch.diagonal(s2, dim1=-2, dim2=-1).sum(-1)
    w2 = ((m1 - m2) ** 2).sum(-1) + tr - 2.0 * cross
    return w2.clamp_min(0.0)


def diag_w2(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """W2^2 between diagonal Gaussians, closed form: |m1-m2|^2 + |sqrt v1 - sqrt v2|^2.

    Variances (..., d). Diagonal covariances commute, so the cross term of the general
    formula is sum sqrt(v1 v2): O(d) and no eigendecomposition.
    """
    return ((m1 - m2) ** 2).sum(-1) + ((v1.clamp_min(0).sqrt() - v2.clamp_min(0).sqrt()) ** 2).sum(-1)


def structure_of(mean: torch.Tensor, cov: torch.Tensor) -> str:
    """``full`` (cov (..., d, d)), ``diag`` (variances (..., d)) or ``none`` (cov (..., 0))."""
    if cov.shape[-1] == 0:
        return "none"
    return "full" if cov.dim() == mean.dim() + 1 else "diag"


def structured_w2(m1: torch.Tensor, s1: torch.Tensor, m2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """W2^2 under the covariance structure the shapes carry (see ``structure_of``): the full
    Bures-Wasserstein distance, its diagonal closed form, or the squared mean distance."""
    kind = structure_of(m1, s1)
    if kind == "full":
        return gaussian_w2(m1, s1, m2, s2)
    if kind == "diag":
        return diag_w2(m1, s1, m2, s2)
    return ((m1 - m2) ** 2).sum(-1)
