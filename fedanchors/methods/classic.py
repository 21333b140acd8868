"""The classic group weightings: ERM, importance weighting, fixed lambdas and online GroupDRO."""

from __future__ import annotations

import torch

from fedanchors import groupdro
from fedanchors.config import MethodConfig
from fedanchors.errors import ConfigError
from fedanchors.methods.base import METHODS, Method, masked


@METHODS.register("erm")
class ERM(Method):
    """Empirical risk: groups weighted by their example counts (a plain mean over samples)."""

    def weights(self, counts, losses, epoch):
        return masked(counts.to(torch.float64), counts)


@METHODS.register("iw")
class ImportanceWeighting(Method):
    """Importance weighting to a uniform distribution over groups."""

    def weights(self, counts, losses, epoch):
        return masked(torch.ones(len(self.groups), dtype=torch.float64), counts)


@METHODS.register("balanced")
class Balanced(Method):
    """Fixed per-group lambdas (``method.lambdas``; a group not named there gets 1)."""

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        super().__init__(cfg, groups)
        unknown = sorted(set(cfg.lambdas) - set(groups))
        if unknown:
            raise ConfigError(f"method.lambdas: unknown group(s) {unknown}; groups are {groups}")
        self.lam = torch.tensor([float(cfg.lambdas.get(g, 1.0)) for g in groups], dtype=torch.float64)
        if bool((self.lam < 0).any()) or float(self.lam.sum()) <= 0:
            raise ConfigError("method.lambdas must be >= 0 with a positive sum")

    def weights(self, counts, losses, epoch):
        return masked(self.lam, counts)


@METHODS.register("groupdro")
class GroupDRO(Method):
    """Online GroupDRO: q follows the group losses; uniform during ``warmup`` epochs."""

    def weights(self, counts, losses, epoch):
        if epoch < self.cfg.warmup:
            return masked(torch.ones_like(self.q), counts)
        lw = None if losses is None else losses.to(torch.float64)
        if lw is not None:
            lw = torch.where(counts > 0, lw, torch.full_like(lw, float("nan")))
        return masked(groupdro.objective_weights(self.q, lw, self.cfg.objective, self.cfg.eta), counts)

    def step(self, losses, epoch):
        if epoch >= self.cfg.warmup:
            c = self.cfg
            self.q = groupdro.update_q(self.q, losses.to(torch.float64), c.eta, c.update, c.gamma)
