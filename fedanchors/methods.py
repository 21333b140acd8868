"""Methods: how groups are weighted in the loss (centralized) and the aggregation (federated).

Each method maps per-group example counts and losses to weights w (G,) that sum to 1
over the groups present: centralized mode minimises sum_g w_g CE_g, federated mode
averages the head with the same w. ``step`` runs after the optimizer step.
"""

from __future__ import annotations

import torch

from fedanchors import groupdro
from fedanchors.config import MethodConfig
from fedanchors.errors import ConfigError
from fedanchors.registry import Registry

METHODS: Registry = Registry("method")


class Method:
    """Base: stateless weights from counts; subclasses override ``weights``."""

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        self.cfg = cfg
        self.groups = list(groups)
        self.q = torch.full((len(groups),), 1.0 / len(groups), dtype=torch.float64)

    def weights(self, counts: torch.Tensor, losses: torch.Tensor | None, epoch: int) -> torch.Tensor:
        """Weights (G,) over groups with counts > 0, summing to 1."""
        raise NotImplementedError

    def step(self, losses: torch.Tensor, epoch: int) -> None:
        """Update internal state from this step's group losses (NaN = absent)."""

    def state_dict(self) -> dict:
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].clone().to(torch.float64)


def _masked(w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    w = torch.where(counts > 0, w, torch.zeros_like(w))
    return w / w.sum()


@METHODS.register("erm")
class ERM(Method):
    """Empirical risk: groups weighted by their example counts (a plain mean over samples)."""

    def weights(self, counts, losses, epoch):
        return _masked(counts.to(torch.float64), counts)


@METHODS.register("iw")
class ImportanceWeighting(Method):
    """Importance weighting to a uniform distribution over groups."""

    def weights(self, counts, losses, epoch):
        return _masked(torch.ones(len(self.groups), dtype=torch.float64), counts)


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
        return _masked(self.lam, counts)


@METHODS.register("groupdro")
class GroupDRO(Method):
    """Online GroupDRO: q follows the group losses; uniform during ``warmup`` epochs."""

    def weights(self, counts, losses, epoch):
        if epoch < self.cfg.warmup:
            return _masked(torch.ones_like(self.q), counts)
        lw = None if losses is None else losses.to(torch.float64)
        if lw is not None:
            lw = torch.where(counts > 0, lw, torch.full_like(lw, float("nan")))
        return _masked(groupdro.objective_weights(self.q, lw, self.cfg.objective, self.cfg.eta), counts)

    def step(self, losses, epoch):
        if epoch >= self.cfg.warmup:
            c = self.cfg
            self.q = groupdro.update_q(self.q, losses.to(torch.float64), c.eta, c.update, c.gamma)


def build_method(cfg: MethodConfig, groups: list[str]) -> Method:
    """Instantiate the configured method for these groups."""
    return METHODS.get(cfg.name, "method.name")(cfg, groups)
