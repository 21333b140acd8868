"""Long-tailed MNIST with head / tail groups split at a class boundary (the long-tail gate's grouping)."""

from __future__ import annotations

import torch

from fedanchors.config import DataConfig
from fedanchors.data.base import (
    GroupData,
    ScenarioData,
    Split,
    options_dataclass,
    scenario,
    scenario_options,
    split_fractions,
)
from fedanchors.data.mnist import mnist_pool
from fedanchors.errors import ConfigError


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Exponential profile (Cao et al. 2019): n_c = round(n_max * imbalance^(-c / (C - 1)))."""
    return [max(1, round(n_max * imbalance ** (-c / (num_classes - 1)))) for c in range(num_classes)]


@options_dataclass
class MnistLtOptions:
    """Imbalance factor (n_0 / n_9) and the boundary: classes below ``head_classes`` are the head."""

    imbalance: float = 100.0
    head_classes: int = 5


@scenario("mnist_lt", MnistLtOptions)
def mnist_lt(cfg: DataConfig) -> ScenarioData:
    """Training classes follow the long-tailed profile; validation and test stay balanced.

    Class c keeps the first n_c images of its seeded training split, with n_0 the
    smallest class's training count (so every class can reach its quota). Group
    ``head`` holds classes 0..k-1, group ``tail`` the rest; both share one encoder.
    """
    o = scenario_options(MnistLtOptions, cfg)
    if o.imbalance < 1:
        raise ConfigError(f"data.options.imbalance must be >= 1, got {o.imbalance}")
    if not 0 < o.head_classes < 10:
        raise ConfigError(f"data.options.head_classes must be in 1..9, got {o.head_classes}")
    x, y = mnist_pool(cfg)
    te, va = cfg.test_fraction, cfg.val_fraction
    test, val, train = split_fractions(len(y), [te, va, 1 - te - va], cfg.split_seed)
    ytr = y[train]
    quota = longtail_counts(int(torch.bincount(ytr, minlength=10).min()), 10, o.imbalance)
    keep = torch.cat([train[ytr == c][:n] for c, n in enumerate(quota)])
    classes = {"head": list(range(o.head_classes)), "tail": list(range(o.head_classes, 10))}
    groups = []
    for name, cls in classes.items():
        member = torch.tensor(cls)

        def part(idx: torch.Tensor, member: torch.Tensor = member) -> Split:
            sel = idx[torch.isin(y[idx], member)]
            return Split(x[sel], y[sel])

        groups.append(GroupData(name, "mnist", part(keep), part(val), part(test), meta={"quota": quota}))
    return ScenarioData(groups, 10, class_sets=classes)
