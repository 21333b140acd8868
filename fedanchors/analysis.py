"""Diagnostics of the shared latent space: how far apart groups' class Gaussians are."""

from __future__ import annotations

import torch
from torch import nn

from fedanchors.data import ScenarioData
from fedanchors.losses import anchor_w2_by_group
from fedanchors.moments import class_sufficient_stats, stats_to_moments
from fedanchors.wasserstein import gaussian_w2


@torch.no_grad()
def chunks(encoder: nn.Module, x: torch.Tensor, device: torch.device | None = None, batch: int = 512):
    """``(slice, codes on CPU)`` of ``x`` in chunks of ``batch``, the encoder in eval mode
    (its mode restored after): the one chunked encoding every pass over a split uses."""
    device = device or next(encoder.parameters()).device
    was = encoder.training
    encoder.eval()
    try:
        for i in range(0, len(x), batch):
            yield slice(i, i + batch), encoder(x[i : i + batch].to(device)).cpu()
    finally:
        encoder.train(was)


@torch.no_grad()
def group_class_gaussians(
    encoder: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    cov_eps: float = 1e-3,
    structure: str = "full",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts (C,), means (C, d), covs (C, d, d)) of one group's latent codes; covariances
    in ``structure`` (variances (C, d) for diag, (C, 0) for none)."""
    sums = None
    for sl, z in chunks(encoder, x):
        part = class_sufficient_stats(z, y[sl].cpu(), num_classes, structure)
        sums = part if sums is None else tuple(a + b for a, b in zip(sums, part))
    means, covs = stats_to_moments(*sums, cov_eps)
    return sums[0], means, covs


def cross_group_w2(encoders: dict[str, nn.Module], data: ScenarioData, split: str = "val") -> dict[str, float]:
    """Mean over shared classes of W2^2 between two groups' class Gaussians, for every group pair.

    Keys ``w2:<a>|<b>``. Small values mean the groups' encoders map each class to the same
    region of the latent space, which the anchors are there to achieve.
    """
    stats = {}
    for g in data.groups:
        s = getattr(g, split)
        device = next(encoders[g.space].parameters()).device
        stats[g.name] = group_class_gaussians(encoders[g.space], s.x.to(device), s.y, data.num_classes)
    out = {}
    names = data.names
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (na, ma, sa), (nb, mb, sb) = stats[a], stats[b]
            both = (na > 0) & (nb > 0)
            out[f"w2:{a}|{b}"] = float(gaussian_w2(ma[both], sa[both], mb[both], sb[both]).mean())
    return out


def anchor_w2(encoders: dict[str, nn.Module], anchors, data: ScenarioData, split: str = "val") -> dict[str, float]:
    """``w2_anchor:<g>``: how far each group's class Gaussians sit from the anchors (on CPU)."""
    with torch.no_grad():
        am, ac = anchors.means.detach().cpu(), anchors.covariances().detach().cpu()
    out = {}
    for g in data.groups:
        s = getattr(g, split)
        device = next(encoders[g.space].parameters()).device
        n, m, c = group_class_gaussians(
            encoders[g.space], s.x.to(device), s.y, data.num_classes, structure=anchors.structure
        )
        with torch.no_grad():
            out[f"w2_anchor:{g.name}"] = float(anchor_w2_by_group(am, ac, n[None], m[None], c[None])[0])
    return out
