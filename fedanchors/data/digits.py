"""scikit-learn's bundled UCI digits (the embedded default's data; the ``uci_digits`` source)."""

from __future__ import annotations

import torch


def load_uci_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797, 1, 8, 8) in [0, 1] and labels, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.int64)
