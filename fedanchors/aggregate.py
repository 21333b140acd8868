"""Server-side maths of a federated round, free of any Flower type.

- ``weighted_average``: the head (all clients) and each shared encoder (the clients of
  its input space), weights renormalised over the clients that hold the tensor;
- ``fit_anchors``: gradient steps on lambda_fit * sum_g w_g mean_c W2^2(anchor_c,
  client moments) + lambda_sep * separation (a Wasserstein-barycenter step);
- ``space_weights``: a client's total holder weight, which scales its encoder gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.config import AnchorConfig, OptimConfig
from fedanchors.losses import anchor_fit_objective
from fedanchors.train import separation_loss


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
) -> dict[str, float]:
    """Move the anchors toward the clients' class moments (and apart), in place.

    counts (G, C), means (G, C, d), covs (G, C, d, d), weights (G,). The anchors step
    with Adam at ``cfg.server_lr``; with ``sep: classifier`` the head also steps (at the
    clients' ``optim.lr``), which calibrates it on the anchors. Returns the fit objective
    before and after, and the last separation loss.
    """
    groups = [{"params": list(anchors.parameters()), "lr": cfg.server_lr}]
    if cfg.lambda_sep > 0 and cfg.sep == "classifier":
        groups.append({"params": list(head.parameters()), "lr": optim.lr})
    opt = torch.optim.Adam(groups)
    w = weights.to(anchors.means.dtype)

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fit = anchor_fit_objective(anchors, counts, means, covs, w)
        sep = separation_loss(anchors, head, cfg, generator) if cfg.lambda_sep > 0 else torch.zeros(())
        return cfg.lambda_fit * fit + cfg.lambda_sep * sep, fit, sep

    with torch.no_grad():
        before = float(anchor_fit_objective(anchors, counts, means, covs, w))
    sep = torch.zeros(())
    for _ in range(cfg.server_steps):
        loss, _, sep = objective()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(anchor_fit_objective(anchors, counts, means, covs, w))
    return {"fit_before": before, "fit": after, "sep": float(sep.detach())}
