"""Long-tailed MNIST (Cao et al. 2019's exponential profile) as a source.

The MNIST pool is split into test (``data.test_fraction``), validation
(``data.val_fraction``) and training, seeded by ``data.split_seed``; class c keeps the first
n_c = round(n_0 * imbalance^(-c / 9)) images of its training split, n_0 the smallest class's
training count (so every class reaches its quota). Validation and test stay balanced.
Groups take classes (``classes: [0, 1, 2, 3, 4]`` for a head group), each the whole source
(``fraction: 1``); ``data.class_sets`` names the head and the tail for the metrics.
"""

from dataclasses import dataclass

import torch

from fedanchors.data.base import split_fractions
from fedanchors.data.mnist import mnist_pool
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.errors import ConfigError


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """Exponential profile (Cao et al. 2019): n_c = round(n_max * imbalance^(-c / (C - 1)))."""
    return [max(1, round(n_max * imbalance ** (-c / (num_classes - 1)))) for c in range(num_classes)]


@dataclass(frozen=True)
class MnistLtOptions:
    """The imbalance factor n_0 / n_9."""

    imbalance: float = 100.0


@source("mnist_lt", classes=10, modality="image", shape=(1, 28, 28), options=MnistLtOptions, official_test=True)
def mnist_lt(cfg, o: MnistLtOptions) -> SourceData:
    """MNIST with a long-tailed training split (``imbalance``), balanced validation and test."""
    if o.imbalance < 1:
        raise ConfigError(f"mnist_lt options: imbalance must be >= 1, got {o.imbalance}")
    x, y = mnist_pool(cfg)
    te, va = cfg.test_fraction, cfg.val_fraction
    test, val, train = split_fractions(len(y), [te, va, 1 - te - va], cfg.split_seed)
    ytr = y[train]
    quota = longtail_counts(int(torch.bincount(ytr, minlength=10).min()), 10, o.imbalance)
    keep = torch.cat([train[ytr == c][:n] for c, n in enumerate(quota)])
    return SourceData(Pool(x[keep], y[keep]), Pool(x[test], y[test]), val=Pool(x[val], y[val]), meta={"quota": quota})
