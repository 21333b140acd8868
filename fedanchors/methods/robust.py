"""Robust federated objectives as group weightings, each after its paper's update.

- ``afl``, agnostic federated learning (Mohri, Sivek, Suresh, ICML 2019): min over the model,
  max over lambda in Lambda of sum_g lambda_g L_g. Stochastic AFL alternates the model's
  step on the lambda-weighted loss (these weights) and a projected gradient-ascent step
  lambda <- Proj_Lambda(lambda + eta L) (``method.eta``), Lambda = {lambda in the simplex,
  lambda_g >= floor_g} (``method.floor``; the whole simplex without).
- ``qffl``, q-fair federated learning (Li, Sanjabi, Beirami, Smith, ICLR 2020): min sum_g p_g
  L_g^(q+1) / (q+1), p_g the groups' example shares; its gradient is sum_g p_g L_g^q grad L_g,
  so the group weights are proportional to p_g L_g^q (``method.q_fair``; q = 0 is ERM).
  In federated mode the server takes the q-FedAvg step (``fedanchors.methods.qfedavg``).
- ``drfa``, distributionally robust federated averaging (Deng, Kamani, Mahdavi, NeurIPS 2020):
  the same min-max objective as AFL, with clients drawn in proportion to lambda, a snapshot
  at a random local step and lambda's ascent step from the snapshot's losses on uniformly
  drawn clients (``fedanchors.fedserver.units``); federated only.
- ``fgdro_cvar`` (Guo and Yang, NeurIPS 2024): the CVaR objective, the mean of the K largest
  group losses (``method.top_k``): weight 1/K on each of them.
- ``fgdro_kl`` (the same paper): the KL-regularised objective max_p sum_g p_g L_g - lambda
  KL(p || uniform), whose maximiser is p = softmax(u / lambda), u the moving averages of the
  group losses (u <- gamma u + (1 - gamma) L; ``method.temperature``, ``method.gamma``).

Until a first loss is known, every method weights the groups present uniformly (AFL: its
starting lambda). Groups without a loss this step (NaN) take no ascent step and keep their
moving average.
"""

from __future__ import annotations

import torch

from fedanchors.config import MethodConfig
from fedanchors.errors import ConfigError
from fedanchors.methods.base import METHODS, Method, masked


def project_simplex(v: torch.Tensor, total: float = 1.0) -> torch.Tensor:
    """Euclidean projection of ``v`` (G,) onto {x >= 0, sum x = total} (Duchi et al. 2008)."""
    if total <= 0:
        return torch.zeros_like(v)
    u = torch.sort(v, descending=True).values
    css = torch.cumsum(u, 0) - total
    k = torch.arange(1, len(v) + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / k > 0).max())
    return torch.clamp(v - css[rho] / (rho + 1), min=0.0)


def project_lambda(v: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto Lambda = {x in the simplex, x >= floor}: floor + the
    projection of v - floor onto the simplex scaled to 1 - sum(floor)."""
    return floor + project_simplex(v - floor, 1.0 - float(floor.sum()))


def _losses(losses: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor | None:
    """The present groups' losses (NaN elsewhere), or None when none is known."""
    if losses is None:
        return None
    lw = torch.where(counts > 0, losses.to(torch.float64), torch.full_like(losses, float("nan"), dtype=torch.float64))
    return None if bool(torch.isnan(lw).all()) else lw


@METHODS.register("afl")
class AFL(Method):
    """Agnostic federated learning: lambda on Lambda by projected gradient ascent."""

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        super().__init__(cfg, groups)
        unknown = sorted(set(cfg.floor) - set(groups))
        if unknown:
            raise ConfigError(f"method.floor: unknown group(s) {unknown}; groups are {groups}")
        self.floor = torch.tensor([float(cfg.floor.get(g, 0.0)) for g in groups], dtype=torch.float64)
        if bool((self.floor < 0).any()) or float(self.floor.sum()) > 1 + 1e-12:
            raise ConfigError(
                f"method.floor: {dict(cfg.floor)} leaves Lambda empty (each floor >= 0, their sum at most 1)"
            )
        if not cfg.eta > 0:
            raise ConfigError(f"method.eta must be > 0 for afl (lambda's ascent step), got {cfg.eta}")
        self.q = project_lambda(self.q, self.floor)

    def weights(self, counts, losses, epoch):
        return masked(self.q, counts)

    def step(self, losses, epoch):
        grad = torch.nan_to_num(losses.to(torch.float64), nan=0.0)
        self.q = project_lambda(self.q + self.cfg.eta * grad, self.floor)


@METHODS.register("drfa")
class DRFA(AFL):
    """DRFA: AFL's lambda, realised by the server's sampling; ascent from the snapshot's losses."""

    draws_clients = True  # the server draws the round's clients in proportion to lambda

    def weights(self, counts, losses, epoch):
        return masked(self.q, counts)

    def step(self, losses, epoch):
        """No step from the round's own losses: lambda moves in ``ascent``."""

    def ascent(self, v: torch.Tensor) -> None:
        """lambda <- Proj_Lambda(lambda + eta v), v the snapshot's loss estimates (eta: the paper's gamma tau)."""
        self.q = project_lambda(self.q + self.cfg.eta * v.to(torch.float64), self.floor)


@METHODS.register("qffl")
class QFFL(Method):
    """q-FFL: weights proportional to p_g L_g^q (a unit without a loss yet counts with the mean
    of the known ones); federated, the server takes the q-FedAvg step."""

    qfedavg = True

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        super().__init__(cfg, groups)
        if cfg.q_fair < 0:
            raise ConfigError(f"method.q_fair must be >= 0 (0: ERM), got {cfg.q_fair}")

    def weights(self, counts, losses, epoch):
        p = counts.to(torch.float64)
        lw = _losses(losses, counts)
        if lw is None or self.cfg.q_fair == 0:
            return masked(p, counts)
        known = lw[~torch.isnan(lw)]
        lw = torch.nan_to_num(lw, nan=float(known.mean()))
        w = masked(p * lw.clamp_min(0) ** self.cfg.q_fair, counts)
        self.q = w
        return w


@METHODS.register("fgdro_cvar")
class FGDROCVaR(Method):
    """FGDRO-CVaR: 1/K on each of the K largest present group losses."""

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        super().__init__(cfg, groups)
        if not 1 <= cfg.top_k <= len(groups):
            raise ConfigError(f"method.top_k must be in 1..{len(groups)} (the number of groups), got {cfg.top_k}")

    def weights(self, counts, losses, epoch):
        lw = _losses(losses, counts)
        if lw is None:
            return masked(torch.ones_like(self.q), counts)
        present = ~torch.isnan(lw)
        k = min(self.cfg.top_k, int(present.sum()))
        top = torch.topk(torch.where(present, lw, -torch.inf), k).indices
        w = torch.zeros_like(self.q)
        w[top] = 1.0 / k
        self.q = w
        return w


@METHODS.register("fgdro_kl")
class FGDROKL(Method):
    """FGDRO-KL: p = softmax(u / temperature) over the moving averages u of the group losses."""

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        super().__init__(cfg, groups)
        if not cfg.temperature > 0:
            raise ConfigError(f"method.temperature must be > 0, got {cfg.temperature}")
        if not 0 <= cfg.gamma < 1:
            raise ConfigError(f"method.gamma (the moving average's memory) must be in [0, 1), got {cfg.gamma}")
        self.u = torch.full((len(groups),), float("nan"), dtype=torch.float64)  # no estimate yet

    def weights(self, counts, losses, epoch):
        known = ~torch.isnan(self.u) & (counts > 0)
        if not bool(known.any()):
            return masked(torch.ones_like(self.q), counts)
        logits = torch.where(known, self.u / self.cfg.temperature, -torch.inf)
        w = masked(torch.softmax(logits, 0), counts)
        self.q = w
        return w

    def step(self, losses, epoch):
        lw = losses.to(torch.float64)
        fresh = ~torch.isnan(lw)
        first = fresh & torch.isnan(self.u)
        g = self.cfg.gamma
        self.u = torch.where(first, lw, torch.where(fresh, g * self.u + (1 - g) * lw, self.u))

    def state_dict(self) -> dict:
        return {"q": self.q.clone(), "u": self.u.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.u = state["u"].clone().to(torch.float64)
