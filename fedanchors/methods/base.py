"""The method registry, the base class every method extends, and ``build_method``."""

from __future__ import annotations

import torch

from fedanchors.config import MethodConfig
from fedanchors.registry import Registry

METHODS: Registry = Registry("method")


class Method:
    """Base: stateless weights from counts; subclasses override ``weights``."""

    def __init__(self, cfg: MethodConfig, groups: list[str]) -> None:
        self.cfg = cfg
        self.groups = list(groups)
        self.q = torch.full((len(groups),), 1.0 / len(groups), dtype=torch.float64)
        self.sizes: torch.Tensor | None = None  # training examples per group (set by the trainer)
        self.rate = 1.0  # method.eta_unit epoch: this step's share of an epoch (set by the trainer)

    def weights(self, counts: torch.Tensor, losses: torch.Tensor | None, epoch: int) -> torch.Tensor:
        """Weights (G,) over groups with counts > 0, summing to 1."""
        raise NotImplementedError

    def step(self, losses: torch.Tensor, epoch: int) -> None:
        """Update internal state from this step's group losses (NaN = absent)."""

    def state_dict(self) -> dict:
        return {"q": self.q.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].clone().to(torch.float64)


def masked(w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``w`` zeroed where a group has no examples, renormalised to sum to 1."""
    w = torch.where(counts > 0, w, torch.zeros_like(w))
    return w / w.sum()


def build_method(cfg: MethodConfig, groups: list[str]) -> Method:
    """Instantiate the configured method for these groups."""
    return METHODS.get(cfg.name, "method.name")(cfg, groups)
