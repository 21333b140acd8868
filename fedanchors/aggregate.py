"""Server-side maths of a federated round, free of any Flower type.

- ``weighted_average``: the head (all clients) and each shared encoder (the clients of
  its input space), weights renormalised over the clients that hold the tensor;
- ``fit_anchors``: a Wasserstein-barycenter step of the anchors toward the clients'
  class moments, then gradient steps on the separation loss;
- ``space_weights``: a client's total holder weight, which scales its encoder gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.config import AnchorConfig, OptimConfig
from fedanchors.losses import anchor_fit_objective
from fedanchors.train import separation_loss
from fedanchors.wasserstein import sqrtm_psd


def weighted_average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i (w_i / sum w) * state_i, key by key (float accumulation in float64)."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("weighted_average needs at least one state with positive weight")
    out = {}
    for k in states[0]:
        acc = sum((w / total) * s[k].double() for s, w in zip(states, weights))
        out[k] = acc.to(states[0][k].dtype)
    return out


def space_weights(spaces: list[str], weights: torch.Tensor) -> list[float]:
    """For each client, the summed weight of all clients sharing its input space."""
    total: dict[str, float] = {}
    for s, w in zip(spaces, weights.tolist()):
        total[s] = total.get(s, 0.0) + w
    return [total[s] for s in spaces]


def _class_weights(counts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-class group weights (G, C) of the fit objective: w_g / K_g where class c is present."""
    present = (counts > 0).to(weights.dtype)
    per_group = weights / present.sum(1).clamp_min(1)  # each group averages over its K_g classes
    return present * per_group.unsqueeze(1)


@torch.no_grad()
def barycenter_step(
    anchors: AnchorModule,
    counts: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
    weights: torch.Tensor,
    by_counts: bool = False,
) -> None:
    """One Wasserstein-barycenter step of every anchor toward the clients' class Gaussians, in place.

    Means: the exact minimiser, the weighted mean of the clients' class means. Covariances:
    one fixed-point iteration S <- S^-1/2 (sum_g a_g (S^1/2 Sigma_g S^1/2)^1/2)^2 S^-1/2
    (Alvarez-Esteban et al. 2016, Thm 4.2), warm-started from the current anchors, so the
    anchors converge to the barycenter over rounds. Classes no client holds stay put.
    Diagonal anchors: the barycenter in closed form, sqrt(v) = sum_g a_g sqrt(v_g) (diagonal
    Gaussians commute); means-only anchors: the means step alone. ``by_counts``: each class
    weighted by how many examples of it each group holds (FedProto's prototype average).
    """
    wc = counts.to(means.dtype) if by_counts else _class_weights(counts, weights.to(means.dtype))  # (G, C)
    seen = wc.sum(0) > 0
    a = wc / wc.sum(0).clamp_min(1e-12)
    new_means = (a.unsqueeze(-1) * means).sum(0)
    anchors.means[seen] = new_means[seen].to(anchors.means.dtype)
    if anchors.structure == "none":
        return
    if anchors.structure == "diag":  # commuting covariances: sqrt of the barycenter = mean of sqrts, exactly
        root = (a.unsqueeze(-1) * covs.clamp_min(0).sqrt()).sum(0)
        anchors.factors[seen] = (root**2 - anchors.eps).clamp_min(0).sqrt()[seen].to(anchors.factors.dtype)
        return
    lam, u = torch.linalg.eigh(anchors.covariances())
    root = (u * lam.clamp_min(1e-12).sqrt().unsqueeze(-2)) @ u.mT
    inv_root = (u * lam.clamp_min(1e-12).rsqrt().unsqueeze(-2)) @ u.mT
    t = (a[..., None, None] * sqrtm_psd(root @ covs @ root)).sum(0)  # (C, d, d)
    s_new = inv_root @ t @ t @ inv_root
    eye = torch.eye(s_new.shape[-1], dtype=s_new.dtype)
    target = 0.5 * (s_new + s_new.mT) - anchors.eps * eye
    factor, info = torch.linalg.cholesky_ex(target)
    if bool((info != 0).any()):  # below eps somewhere: take the PSD part
        factor = sqrtm_psd(target)
    anchors.factors[seen] = factor[seen].to(anchors.factors.dtype)


def fit_anchors(
    anchors: AnchorModule,
    head: nn.Module,
    counts: torch.Tensor,
    means: torch.Tensor,
    covs: torch.Tensor,
    weights: torch.Tensor,
    cfg: AnchorConfig,
    optim: OptimConfig,
    generator: torch.Generator | None = None,
    update: str = "barycenter",
) -> dict[str, float]:
    """The server's anchor update, in place.

    counts (G, C), means (G, C, d), covs (G, C, d, d), weights (G,). The fit objective is
    sum_g w_g mean_{c: n_gc > 0} W2^2(anchor_c, N(mu_gc, Sigma_gc)). ``update="barycenter"``:
    a barycenter step on the fit, then ``server_steps`` Adam steps on lambda_sep * sep;
    ``"gradient"``: ``server_steps`` Adam steps on lambda_fit * fit + lambda_sep * sep.
    Anchors at ``server_lr``; with ``sep: classifier`` the head too, at
    ``anchors.server_head_lr`` (0: the clients' ``optim.lr``), which calibrates it on the
    anchors. Returns the fit objective before and after, and the last separation loss.
    """
    w = weights.to(anchors.means.dtype)
    with torch.no_grad():
        before = float(anchor_fit_objective(anchors, counts, means, covs, w))
    if cfg.lambda_fit > 0 and update == "barycenter":
        barycenter_step(anchors, counts, means, covs, w, by_counts=cfg.fit == "prototype")
    fit_grad = cfg.lambda_fit if update == "gradient" else 0.0
    sep = torch.zeros(())
    if (cfg.lambda_sep > 0 or fit_grad > 0) and cfg.server_steps > 0:
        groups = [{"params": list(anchors.parameters()), "lr": cfg.server_lr}]
        if cfg.sep == "classifier" and cfg.lambda_sep > 0:
            groups.append({"params": list(head.parameters()), "lr": cfg.server_head_lr or optim.lr})
        opt = torch.optim.Adam(groups)
        for _ in range(cfg.server_steps):
            loss = torch.zeros(())
            if cfg.lambda_sep > 0:
                sep = separation_loss(anchors, head, cfg, generator)
                loss = loss + cfg.lambda_sep * sep
            if fit_grad > 0:
                loss = loss + fit_grad * anchor_fit_objective(anchors, counts, means, covs, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = float(anchor_fit_objective(anchors, counts, means, covs, w))
    return {"fit_before": before, "fit": after, "sep": float(sep.detach())}
