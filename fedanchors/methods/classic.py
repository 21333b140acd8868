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

    def step(self, losses, epoch):
        """q (what ``q:<g>`` logs) is ERM's expected weight: each group's share of the examples."""
        if self.sizes is not None:
            self.q = self.sizes.to(torch.float64) / float(self.sizes.sum())


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
        self.q = self.lam / self.lam.sum()  # what q:<g> logs: the fixed weights

    def weights(self, counts, losses, epoch):
        return masked(self.lam, counts)


@METHODS.register("groupdro")
class GroupDRO(Method):
    """Online GroupDRO: q follows the group losses; uniform during ``warmup`` epochs. With
    ``method.adjustment`` C > 0 the q step reads L_g + C / sqrt(n_g) (Sagawa et al. 2020's
    generalisation adjustment: a small group's loss is optimistic, so it is raised). With
    ``method.mix`` a > 0 the weights are (1 - a) q + a n_g / N: ERM's share a stays, so a shared
    part keeps learning from every group however far q moves. Its step is
    eta times ``rate`` (``method.eta_unit: epoch``: the step's share of an epoch)."""

    def weights(self, counts, losses, epoch):
        if epoch < self.cfg.warmup:
            return masked(torch.ones_like(self.q), counts)
        lw = None if losses is None else losses.to(torch.float64)
        if lw is not None:
            lw = torch.where(counts > 0, lw, torch.full_like(lw, float("nan")))
        w = masked(groupdro.objective_weights(self.q, lw, self.cfg.objective, self.cfg.eta), counts)
        if self.cfg.mix > 0:
            w = (1 - self.cfg.mix) * w + self.cfg.mix * masked(counts.to(torch.float64), counts)
        return w

    def step(self, losses, epoch):
        if epoch >= self.cfg.warmup:
            c = self.cfg
            lw = losses.to(torch.float64)
            if c.adjustment > 0:
                if self.sizes is None:
                    raise RuntimeError("GroupDRO's adjustment needs the group sizes (Method.sizes) from the trainer")
                lw = lw + c.adjustment / self.sizes.to(torch.float64).clamp(min=1).sqrt()
            self.q = groupdro.update_q(self.q, lw, c.eta * self.rate, c.update, c.gamma)
