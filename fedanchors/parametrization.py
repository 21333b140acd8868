"""NTP and muP for the MLP classifier (the gap-analysis study's ``init: ntp | mup``).

The classifier is the ``mlp`` encoder followed by the head: its first Linear is the input
layer, the head's last Linear the output layer, every other Linear a hidden layer. Each
becomes ``ScaledLinear``: W = m * w, w the trained parameter drawn N(0, s^2), for a width n
(the layer's fan_out for the input layer, its fan_in otherwise) and input size d:

| layer | NTP: m, s | muP: m, s |
|---|---|---|
| input | 1/sqrt(d), 1 | sqrt(n/d), 1/sqrt(n) |
| hidden | 1/sqrt(n), 1 | 1, 1/sqrt(n) |
| output | 1/sqrt(n), 1 | 1/sqrt(n), 1/sqrt(n) |

This is the abc-parameterisation of Yang & Hu (2021), W = n^-a w, w ~ N(0, n^-2b), with
(a, b) = input (0, 0) / hidden (1/2, 0) / output (1/2, 0) for NTP and input (-1/2, 1/2) /
hidden (0, 1/2) / output (1/2, 1/2) for muP, the input layer's constant 1/sqrt(d) kept so
that pre-activations are O(1) in d; the learning rate is the same for every layer (c = 0,
their SGD column). At init both give O(1) hidden features; under muP the output starts at
O(1/sqrt(n)) and features move O(1) as n grows (feature learning), under NTP they move
O(1/sqrt(n)) (the kernel regime). Biases start at 0 with multiplier 1. With Adam the abc
update rules differ (their Adam column): compare the two with ``optim.name: sgd``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedanchors.errors import ConfigError

SCALES = {  # role -> scheme -> (multiplier(n, d), std(n))
    "input": {"ntp": (lambda n, d: 1 / math.sqrt(d), lambda n: 1.0),
              "mup": (lambda n, d: math.sqrt(n / d), lambda n: 1 / math.sqrt(n))},
    "hidden": {"ntp": (lambda n, d: 1 / math.sqrt(n), lambda n: 1.0),
               "mup": (lambda n, d: 1.0, lambda n: 1 / math.sqrt(n))},
    "output": {"ntp": (lambda n, d: 1 / math.sqrt(n), lambda n: 1.0),
               "mup": (lambda n, d: 1 / math.sqrt(n), lambda n: 1 / math.sqrt(n))},
}  # fmt: skip


class ScaledLinear(nn.Module):
    """y = x (m w)^T + b with a fixed multiplier m (not a parameter, not in the state dict)."""

    def __init__(self, fan_in: int, fan_out: int, multiplier: float, std: float, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in, generator=gen) * std)
        self.bias = nn.Parameter(torch.zeros(fan_out))
        self.multiplier = multiplier

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.multiplier, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, multiplier={self.multiplier:.4g}"


def _linears(module: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    out = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                out.append((parent, name, child))
    return out


def reparametrize(module: nn.Module, scheme: str, part: str, seed: int) -> nn.Module:
    """Replace every Linear of ``module`` (``part``: "encoder" or "head") by its ScaledLinear."""
    if isinstance(module, nn.Linear):  # a linear head: one output layer
        return reparametrize(nn.Sequential(module), scheme, part, seed)[0]
    found = _linears(module)
    others = [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Embedding, nn.MultiheadAttention))]
    if others or not found:
        raise ConfigError(
            f"model.init: {scheme} is defined for an MLP (encoder kind mlp, head linear or mlp); this {part} has "
            f"{type(others[0]).__name__ if others else 'no Linear layer'}"
        )
    gen = torch.Generator().manual_seed(seed)
    for i, (parent, name, lin) in enumerate(found):
        if part == "encoder":
            role = "input" if i == 0 else "hidden"
        else:
            role = "output" if i == len(found) - 1 else "hidden"
        d, out = lin.in_features, lin.out_features
        n = out if role == "input" else d
        mult, std = SCALES[role][scheme][0](n, d), SCALES[role][scheme][1](n)
        setattr(parent, name, ScaledLinear(d, out, mult, std, gen))
    return module
