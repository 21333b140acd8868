"""ColoredMNIST (Arjovsky et al. 2019) as a source: MNIST cut into colour environments.

The MNIST pool is cut into the test environment (``data.test_fraction``) and equal training
environments, one per entry of ``agreement``: in each, the label is ``digit < 5`` flipped for
exactly ``label_noise`` of the images and the colour (channel 0 red, 1 green) equals that
label for exactly ``agreement`` of them (``fedanchors.data.spurious.colour_environment``).
Each example carries its ``colour``; groups take the (colour, label) cells with
``where: {colour: c}`` and ``classes: [y]``, every one of them the whole source
(``fraction: 1``). The validation split is carved per cell (``data.val_fraction``, seed
``data.split_seed + 31``), so it follows the training distribution; the test environment
is the official test split.
"""

from dataclasses import dataclass

import torch

from fedanchors.data.base import split_fractions
from fedanchors.data.mnist import mnist_pool
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.data.spurious import colour_environment
from fedanchors.errors import ConfigError


@dataclass(frozen=True)
class ColoredMnistOptions:
    """The training environments' colour agreements, the test environment's, the label noise."""

    agreement: tuple[float, ...] = (0.9, 0.8)
    test_agreement: float = 0.1
    label_noise: float = 0.25
    stride: int = 2  # 28x28 -> 14x14, as in the paper


def _shape(o: ColoredMnistOptions) -> tuple[int, ...]:
    side = -(-28 // o.stride) if o.stride >= 1 else 28
    return (2, side, side)


@source("colored_mnist", classes=2, modality="image", shape=_shape, options=ColoredMnistOptions,
        official_test=True, attrs=("colour",))  # fmt: skip
def colored_mnist(cfg, o: ColoredMnistOptions) -> SourceData:
    """MNIST in colour environments: label digit < 5 (noisy), colour attribute ``colour``."""
    rates = [*o.agreement, o.test_agreement, o.label_noise]
    if not o.agreement or any(not 0 <= r <= 1 for r in rates):
        raise ConfigError(f"colored_mnist options: agreement, test_agreement, label_noise in [0, 1], got {rates}")
    if o.stride < 1:
        raise ConfigError(f"colored_mnist options: stride must be >= 1, got {o.stride}")
    images, digits = mnist_pool(cfg)
    share = (1 - cfg.test_fraction) / len(o.agreement)
    parts = split_fractions(len(digits), [share] * len(o.agreement) + [cfg.test_fraction], cfg.split_seed)
    envs = [
        colour_environment(images[p], digits[p], a, o.label_noise, cfg.split_seed + 11 + e, o.stride)
        for e, (p, a) in enumerate(zip(parts, [*o.agreement, o.test_agreement]))
    ]
    x, y, c = (torch.cat([e[k] for e in envs[:-1]]) for k in range(3))
    train, val = [], []
    for colour in (0, 1):
        for label in (0, 1):
            rows = torch.nonzero((c == colour) & (y == label)).squeeze(1)
            v, t = split_fractions(len(rows), [cfg.val_fraction, 1 - cfg.val_fraction], cfg.split_seed + 31)
            train.append(rows[t])
            val.append(rows[v])
    tr, va = torch.cat(train), torch.cat(val)
    tx, ty, tc = envs[-1]
    return SourceData(
        Pool(x[tr], y[tr], attrs={"colour": c[tr]}),
        Pool(tx, ty, attrs={"colour": tc}),
        val=Pool(x[va], y[va], attrs={"colour": c[va]}),
    )
