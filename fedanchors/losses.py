"""Anchor losses shared by both modes: the W2 fit and the separation registry."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.moments import batch_class_moments
from fedanchors.registry import Registry
from fedanchors.wasserstein import gaussian_w2

SEPARATIONS: Registry = Registry("separation loss")


def fit_loss(z: torch.Tensor, y: torch.Tensor, anchors: AnchorModule, cov_eps: float) -> torch.Tensor:
    """Mean over the classes in the batch of W2^2(N(mu_c, Sigma_c), anchor_c)."""
    classes, means, covs = batch_class_moments(z, y, anchors.num_classes, cov_eps)
    s = anchors.covariances()[classes]
    return gaussian_w2(anchors.means[classes], s, means, covs).mean()


def anchor_fit_objective(
    anchors: AnchorModule, counts: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Server's barycenter objective sum_g w_g mean_{c: n_gc > 0} W2^2(anchor_c, N(mu_gc, Sigma_gc)).

    counts (G, C), means (G, C, d), covs (G, C, d, d), weights (G,).
    """
    w2 = gaussian_w2(anchors.means, anchors.covariances(), means, covs)  # (G, C) broadcast
    present = (counts > 0).to(w2.dtype)
    per_group = (w2 * present).sum(1) / present.sum(1).clamp_min(1)
    return (weights.to(w2.dtype) * per_group).sum()


@SEPARATIONS.register("classifier")
def classifier_separation(
    anchors: AnchorModule, head: nn.Module, samples: int, margin: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CE of the head on ``samples`` reparameterised draws per anchor (also calibrates the head)."""
    z, y = anchors.sample(samples, generator)
    return F.cross_entropy(head(z), y)


@SEPARATIONS.register("w2_margin")
def w2_margin_separation(
    anchors: AnchorModule, head: nn.Module, samples: int, margin: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mean over anchor pairs i < j of max(0, margin - W2(anchor_i, anchor_j))."""
    i, j = torch.triu_indices(anchors.num_classes, anchors.num_classes, offset=1, device=anchors.means.device)
    s = anchors.covariances()
    w2 = gaussian_w2(anchors.means[i], s[i], anchors.means[j], s[j])
    return F.relu(margin - (w2 + 1e-12).sqrt()).mean()
