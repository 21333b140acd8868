"""The embedded default: scikit-learn's UCI digits as two pixel-size groups."""

from __future__ import annotations

from dataclasses import field

import torch

from fedanchors.data.base import (
    options_dataclass,
)


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
