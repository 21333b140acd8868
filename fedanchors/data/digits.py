"""The embedded default: scikit-learn's UCI digits as two pixel-size groups."""

from __future__ import annotations

from dataclasses import field

import torch

from fedanchors.config import DataConfig
from fedanchors.data.base import (
    SCENARIOS,
    ScenarioData,
    group_fractions,
    make_group,
    options_dataclass,
    resize,
    scenario_options,
    split_fractions,
)
from fedanchors.errors import ConfigError


@options_dataclass
class DigitsOptions:
    """Fractions of the 1,797 images given to each group (disjoint), and each group's pixel size.

    The input space is the pixel size: groups given the same size share one encoder.
    """

    fractions: dict[str, float] = field(default_factory=lambda: {"digits8": 0.5, "digits16": 0.5})
    sizes: dict[str, int] = field(default_factory=lambda: {"digits8": 8, "digits16": 16})


def load_uci_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797, 1, 8, 8) in [0, 1] and labels, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.int64)


@SCENARIOS.register("digits")
def digits(cfg: DataConfig) -> ScenarioData:
    """``digits8`` (8x8 as is) and ``digits16`` (bilinear 16x16): input spaces ``px8``, ``px16``."""
    opts = scenario_options(DigitsOptions, cfg)
    names = ["digits8", "digits16"]
    sizes = group_fractions(opts.sizes, names)
    if any(s < 8 or s != int(s) for s in sizes):
        raise ConfigError(f"data.options.sizes must be whole pixel sizes >= 8, got {opts.sizes}")
    x, y = load_uci_digits()
    parts = split_fractions(len(y), group_fractions(opts.fractions, names), cfg.split_seed)
    groups = []
    for i, (name, idx, side) in enumerate(zip(names, parts, sizes)):
        xi = resize(x[idx], int(side))
        groups.append(make_group(name, f"px{int(side)}", xi, y[idx], cfg, cfg.split_seed + 1 + i))
    return ScenarioData(groups, 10)
