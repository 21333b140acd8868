"""Server-side maths of a federated round, free of any Flower type.

- ``AGGREGATIONS``: the rules that turn the clients' heads and shared encoders into one
  (``federated.aggregation``: FedAvg's weighted ``mean``, and the robust ``median``,
  ``trimmed_mean`` and ``krum``), and ``clip_update``, the update-norm bound;
- ``fit_anchors``: a Wasserstein-barycenter step of the anchors toward the clients'
  class moments, then gradient steps on the separation loss;
- ``space_weights``: a client's total holder weight, which scales its encoder gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.config import AnchorConfig, OptimConfig
from fedanchors.losses import anchor_fit_objective
from fedanchors.registry import Registry
from fedanchors.train import separation_loss
from fedanchors.wasserstein import sqrtm_psd

State = dict[str, torch.Tensor]
# an aggregation rule: (clients' states, their weights, the options) -> one state. Each rule
# sees whole states so that rules over vectors (Krum) and over coordinates (median) fit alike
AGGREGATIONS: Registry[Callable[..., State]] = Registry("aggregation")


@dataclass(frozen=True)
class AggregationOptions:
    """The rules' own settings (``federated.trim_fraction``, ``federated.krum_byzantine``)."""

    trim_fraction: float = 0.1
    byzantine: int = 1


def weighted_average(states: list[State], weights: list[float]) -> State:
    """sum_i (w_i / sum w) * state_i, key by key (float accumulation in float64)."""
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("weighted_average needs at least one state with positive weight")
    out = {}
    for k in states[0]:  # in place: a fresh float64 tensor per term page-faults (~16 ms per 1M)
        acc = torch.zeros(states[0][k].shape, dtype=torch.float64)
        term = torch.empty_like(acc)
        for s, w in zip(states, weights):  # acc = 0 + t_1 + t_2 + ..., t_i = (w_i / total) * s_i
            acc.add_(term.copy_(s[k]).mul_(w / total))
        out[k] = acc.to(states[0][k].dtype)
    return out


@AGGREGATIONS.register("mean")
def mean_rule(states: list[State], weights: list[float], opts: AggregationOptions) -> State:
    """FedAvg's weighted mean, the weights being the method's (GroupDRO's q split over clients)."""
    return weighted_average(states, weights)


def _stack(states: list[State], k: str) -> torch.Tensor:
    return torch.stack([s[k].double() for s in states])


@AGGREGATIONS.register("median")
def median_rule(states: list[State], weights: list[float], opts: AggregationOptions) -> State:
    """Coordinate-wise median (Yin et al. 2018, Def. 1): per coordinate the middle value of the
    n clients', the mean of the two middle ones for even n. Every client counts once (the
    server passes only clients of positive weight)."""
    n = len(states)
    out = {}
    for k in states[0]:
        s = _stack(states, k).sort(0).values
        mid = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        out[k] = mid.to(states[0][k].dtype)
    return out


@AGGREGATIONS.register("trimmed_mean")
def trimmed_mean_rule(states: list[State], weights: list[float], opts: AggregationOptions) -> State:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Def. 2): per coordinate drop the
    floor(beta n) largest and smallest values, average the rest. Every client counts once."""
    n = len(states)
    b = int(opts.trim_fraction * n)
    if n - 2 * b < 1:
        raise ValueError(f"trimmed_mean with trim_fraction {opts.trim_fraction} leaves no client of {n}")
    return {k: _stack(states, k).sort(0).values[b : n - b].mean(0).to(v.dtype) for k, v in states[0].items()}


def krum_scores(vectors: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of each of n vectors (n, p) (Blanchard et al. 2017): the sum of squared
    distances to its n - f - 2 nearest other vectors."""
    n = vectors.shape[0]
    d2 = torch.cdist(vectors, vectors).pow(2)
    k = n - f - 2
    nearest = d2.sort(1).values[:, 1 : k + 1]  # column 0 is the vector itself (distance 0)
    return nearest.sum(1)


@AGGREGATIONS.register("krum")
def krum_rule(states: list[State], weights: list[float], opts: AggregationOptions) -> State:
    """Krum (Blanchard et al. 2017): the one client's state whose update is closest to its
    n - f - 2 neighbours (f = ``krum_byzantine``; needs n >= 2f + 3). Ties: the lowest index."""
    n, f = len(states), opts.byzantine
    if n < 2 * f + 3:
        raise ValueError(f"krum with krum_byzantine={f} needs at least {2 * f + 3} clients, got {n}")
    flat = torch.stack([torch.cat([s[k].double().flatten() for k in states[0]]) for s in states])
    best = int(torch.argmin(krum_scores(flat, f)))
    return {k: v.clone() for k, v in states[best].items()}


def clip_update(state: State, ref: State, bound: float) -> tuple[State, float]:
    """``ref + (state - ref) * min(1, bound / ||state - ref||)``: the client's update scaled to
    norm at most ``bound`` (the L2 norm over every tensor of the state); and the norm before."""
    delta = {k: state[k].double() - ref[k].double() for k in state}
    norm = float(torch.sqrt(sum((d**2).sum() for d in delta.values())))
    if norm <= bound:
        return state, norm
    scale = bound / norm
    return {k: (ref[k].double() + scale * d).to(state[k].dtype) for k, d in delta.items()}, norm


def update_norm(state: State, ref64: State, work: State) -> float:
    """``||state - ref||`` over every tensor, in float64: ``clip_update``'s norm, computed in
    the buffers ``work`` (float64, ``ref64``'s shapes) so that a round allocates none per client."""
    return float(torch.sqrt(sum(work[k].copy_(state[k]).sub_(ref64[k]).pow_(2).sum() for k in state)))


def space_weights(spaces: list[str], weights: torch.Tensor) -> list[float]:
    """For each client, the summed weight of all clients sharing its input space."""
    total: dict[str, float] = {}
    for s, w in zip(spaces, weights.tolist()):
        total[s] = total.get(s, 0.0) + w
    return [total[s] for s in spaces]


def combine_parts(
    current: dict[str, State],
    clients: list[dict[str, State]],
    weights: list[float],
    rule: Callable[..., State],
    opts: AggregationOptions,
    max_norm: float = 0.0,
) -> tuple[dict[str, State], list[float]]:
    """The server's combination of the shared parts (``"head"``, ``"encoder.<space>"``).

    ``current``: the global value of each part; ``clients[i]``: the parts client i sent (the
    head, its space's encoder when shared), with the method's weight ``weights[i]``. Each
    client's whole update (all its parts, one L2 norm) is first bounded by ``max_norm`` (0:
    none), then every part is combined by ``rule`` over the clients of positive weight that
    hold it; a part whose holders all weigh 0 gets no gradient and is left out (unchanged).
    Returns the combined parts and each client's update norm before the bound.
    """
    held: dict[str, list[tuple[float, State]]] = {}  # part -> (weight, state) of each holder
    norms = []
    ref64 = {f"{n}|{k}": v.double() for n, sd in current.items() for k, v in sd.items()}  # once a round
    work = {k: torch.empty_like(v) for k, v in ref64.items()}
    for w, mine in zip(weights, clients):
        if not mine:
            continue
        flat = {f"{n}|{k}": v for n, sd in mine.items() for k, v in sd.items()}
        norm = update_norm(flat, ref64, work)
        if norm > (max_norm or math.inf):
            flat, _ = clip_update(flat, {key: ref64[key] for key in flat}, max_norm)
        norms.append(norm)
        if w <= 0:  # weight 0: the method leaves this client's group out of the objective
            continue
        parts: dict[str, State] = {}
        for key, v in flat.items():
            n, k = key.split("|", 1)
            parts.setdefault(n, {})[k] = v
        for n, sd in parts.items():
            held.setdefault(n, []).append((w, sd))
    combined = {n: rule([sd for _, sd in hs], [w for w, _ in hs], opts) for n, hs in held.items()}
    return combined, norms


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
