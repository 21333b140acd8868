"""Anchor losses shared by both modes: the W2 fit and the separation registry."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.registry import Registry
from fedanchors.wasserstein import structured_w2

SEPARATIONS: Registry = Registry("separation loss")
CLASS_LOSSES: Registry = Registry("loss")


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log of the training class frequencies n_c / sum n (float32); a class with no example
    gets the log of half an example, so the adjustment stays finite."""
    n = counts.to(torch.float64).clamp_min(0.5)
    return (n / n.sum()).log().float()


@CLASS_LOSSES.register("ce")
def ce_loss(logits: torch.Tensor, y: torch.Tensor, logp: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Plain cross-entropy (the prior is not used)."""
    return F.cross_entropy(logits, y)


@CLASS_LOSSES.register("logit_adjust")
def logit_adjust_loss(logits: torch.Tensor, y: torch.Tensor, logp: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Logit-adjusted loss (Menon et al. 2021): -log softmax(f(x) + tau * log pi)_y."""
    return F.cross_entropy(logits + tau * logp.to(logits), y)


@CLASS_LOSSES.register("balanced_softmax")
def balanced_softmax_loss(logits: torch.Tensor, y: torch.Tensor, logp: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Balanced softmax (Ren et al. 2020): -log(n_y e^{f_y} / sum_j n_j e^{f_j}), i.e. CE on
    f(x) + log pi (``tau`` is not used: the counts enter with power one)."""
    return F.cross_entropy(logits + logp.to(logits), y)


@CLASS_LOSSES.register("mse")
def mse_loss(logits: torch.Tensor, y: torch.Tensor, logp: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Squared loss on one-hot targets: mean over examples of 1/2 ||f(x) - e_y||^2 (the loss of
    the gradient-flow analyses' linearised theory; prediction still takes the argmax)."""
    return 0.5 * (logits - F.one_hot(y, logits.shape[1]).to(logits)).pow(2).sum(1).mean()


def class_loss(logits: torch.Tensor, y: torch.Tensor, cfg, logp: torch.Tensor | None) -> torch.Tensor:
    """The configured classification loss (``cfg``: a LossConfig) of logits (B, C) and labels."""
    if cfg.name in ("logit_adjust", "balanced_softmax") and logp is None:
        raise ValueError(f"loss.name={cfg.name} needs the training class prior")
    return CLASS_LOSSES.get(cfg.name, "loss.name")(logits, y, logp, cfg.tau)


def anchor_w2_by_group(
    anchor_means: torch.Tensor, anchor_covs: torch.Tensor, counts: torch.Tensor, means: torch.Tensor, covs: torch.Tensor
) -> torch.Tensor:
    """Per group, mean over its present classes of W2^2(anchor_c, N(mu_gc, Sigma_gc)) -> (G,).

    anchors (C, d), (C, d, d); groups' counts (G, C), means (G, C, d), covs (G, C, d, d);
    diagonal (variances) or means-only covariances take the structure's W2 (``structured_w2``).
    """
    w2 = structured_w2(anchor_means, anchor_covs, means.to(anchor_means.dtype), covs.to(anchor_means.dtype))
    present = (counts > 0).to(w2.dtype)
    return (w2 * present).sum(1) / present.sum(1).clamp_min(1)


def anchor_fit_objective(
    anchors: AnchorModule, counts: torch.Tensor, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Server's barycenter objective sum_g w_g mean_{c: n_gc > 0} W2^2(anchor_c, N(mu_gc, Sigma_gc))."""
    per_group = anchor_w2_by_group(anchors.means, anchors.covariances(), counts, means, covs)
    return (weights.to(per_group.dtype) * per_group).sum()


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
    w2 = structured_w2(anchors.means[i], s[i], anchors.means[j], s[j])
    return F.relu(margin - (w2 + 1e-12).sqrt()).mean()
