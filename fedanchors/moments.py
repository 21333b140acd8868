"""Per-class moments of latent codes: differentiable batch moments, exact data statistics."""

from __future__ import annotations

import torch


def batch_class_moments(
    z: torch.Tensor, y: torch.Tensor, num_classes: int, cov_eps: float, structure: str = "full"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Moments of the classes present in a batch, differentiable in ``z``.

    z (B, d), y (B,) -> (classes (K,), means (K, d), covs (K, d, d)); covariances are
    the biased (1/n) estimate plus ``cov_eps * I``, so a class seen once gives
    cov_eps * I rather than NaN. Classes absent from the batch are skipped.
    ``structure``: ``diag`` gives variances (K, d) (+ cov_eps), ``none`` an empty (K, 0).
    """
    onehot = torch.nn.functional.one_hot(y, num_classes).to(z.dtype)  # (B, C)
    counts = onehot.sum(0)
    classes = torch.nonzero(counts > 0).squeeze(1)
    w = onehot[:, classes] / counts[classes]  # (B, K) rows of 1/n_c
    means = w.mT @ z  # (K, d)
    if structure == "none":
        return classes, means, means.new_zeros(len(classes), 0)
    if structure == "diag":
        return classes, means, w.mT @ (z * z) - means**2 + cov_eps
    centred = z.unsqueeze(0) - means.unsqueeze(1)  # (K, B, d)
    covs = (centred * w.mT.unsqueeze(-1)).mT @ centred
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return classes, means, covs + cov_eps * eye


@torch.no_grad()
def class_sufficient_stats(
    z: torch.Tensor, y: torch.Tensor, num_classes: int, structure: str = "full"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums for exact moments over a whole split, in float64.

    -> (counts (C,), sums (C, d), outer sums (C, d, d)); add them across batches. The
    second sums follow ``structure``: squares (C, d) for ``diag``, nothing (C, 0) for ``none``.
    """
    z = z.double()
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    if structure == "none":
        second = z.new_zeros(num_classes, 0)
    elif structure == "diag":
        second = onehot.mT @ (z * z)
    else:
        second = torch.einsum("bc,bi,bj->cij", onehot, z, z)
    return onehot.sum(0), onehot.mT @ z, second


def stats_to_moments(
    counts: torch.Tensor, sums: torch.Tensor, outer: torch.Tensor, cov_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts, sums, outer sums) -> (means (C, d), covs (C, d, d)), float32.

    Classes with no samples get mean 0 and cov_eps * I; callers mask them by count.
    """
    n = counts.clamp_min(1).unsqueeze(-1)
    means = sums / n
    if outer.shape[-1] == 0:
        return means.float(), outer.float()
    if outer.dim() == sums.dim():  # diagonal: sums of squares -> variances
        return means.float(), (outer / n - means**2 + cov_eps).float()
    covs = outer / n.unsqueeze(-1) - means.unsqueeze(-1) * means.unsqueeze(-2)
    covs = 0.5 * (covs + covs.mT)
    eye = torch.eye(sums.shape[-1], dtype=covs.dtype)
    return means.float(), (covs + cov_eps * eye).float()


def pool_moments(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Class moments of a union from its parts' (counts (C,), means (C, d), covs (C, d, d)):
    counts add, means and second moments E[z z^T] are count-weighted (float64 inside).
    Diagonal parts (variances (C, d)) pool the same way per coordinate; means-only parts
    (C, 0) pool their means."""
    if len(parts) == 1:
        return parts[0]
    n = torch.stack([p[0] for p in parts]).double()  # (K, C)
    tot = n.sum(0).clamp_min(1)
    means = torch.stack([p[1] for p in parts]).double()
    mu = (n[..., None] * means).sum(0) / tot[:, None]
    covs = torch.stack([p[2] for p in parts]).double()
    dtype = parts[0][1].dtype
    if covs.shape[-1] == 0:
        cov = covs[0]
    elif covs.dim() == means.dim():  # diagonal
        cov = (n[..., None] * (covs + means**2)).sum(0) / tot[:, None] - mu**2
    else:
        second = covs + means[..., None] * means[..., None, :]
        cov = (n[..., None, None] * second).sum(0) / tot[:, None, None] - mu[..., None] * mu[..., None, :]
    return n.sum(0).to(parts[0][0].dtype), mu.to(dtype), cov.to(dtype)
