"""The gating network: an MLP on the features and a router that turns its scores into
per-example expert weights: ``dense`` (softmax over every expert) or ``top_k`` (noisy top-k,
Shazeer et al. 2017: learned Gaussian noise on the scores while training, the k best kept,
softmax over them; the others get exactly 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GateNet(nn.Module):
    """features (B, D) -> scores (B, E); ``route`` gives the weights."""

    def __init__(
        self, in_dim: int, experts: int, hidden: tuple[int, ...], dropout: float, routing: str, top_k: int, noisy: bool
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        self.body = nn.Sequential(*layers)
        self.score = nn.Linear(d, experts)
        self.noise = nn.Linear(d, experts) if routing == "top_k" and noisy else None
        self.routing, self.k, self.experts = routing, top_k, experts

    def forward(self, x: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights (B, E), router probabilities before top-k (B, E), kept mask (B, E) bool)."""
        h = self.body(x)
        s = self.score(h)
        if self.routing == "dense":
            w = torch.softmax(s / temperature, -1)
            return w, w, torch.ones_like(w, dtype=torch.bool)
        probs = torch.softmax(s / temperature, -1)
        if self.training and self.noise is not None:
            s = s + torch.randn_like(s) * F.softplus(self.noise(h))
        keep = torch.zeros_like(s, dtype=torch.bool).scatter_(1, s.topk(self.k, -1).indices, True)
        w = torch.softmax(s.masked_fill(~keep, float("-inf")) / temperature, -1)
        return w, probs, keep
