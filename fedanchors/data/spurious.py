"""Majority / minority groups from MNIST: ColoredMNIST (the gap-analysis study) and confounded
MNIST (the confounder-correction study).

Every group here shares one input space (one encoder): the groups are defined with the
class label, which is unknown at test time, so they serve training weights and metrics only.
"""

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
from fedanchors.data.transforms import dot_mask, exact_subset
from fedanchors.errors import ConfigError

COLOURS = ("red", "green")


def colour_environment(
    images: torch.Tensor, digits: torch.Tensor, agreement: float, label_noise: float, seed: int, stride: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ColoredMNIST environment (Arjovsky et al. 2019), with exact rates.

    The label is ``digit < 5`` flipped for exactly round(label_noise * n) images; the
    colour equals that (noisy) label for exactly round(agreement * n) images. Images
    are downsampled by ``stride`` and put in channel 0 (red, colour 0) or 1 (green).
    Returns (x (n, 2, H, W), label (n,), colour (n,)).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(digits)
    label = (digits < 5).long() ^ exact_subset(n, label_noise, gen).long()
    colour = label ^ exact_subset(n, 1.0 - agreement, gen).long()
    small = images[:, 0, ::stride, ::stride]
    x = torch.zeros(n, 2, *small.shape[1:])
    x[torch.arange(n), colour] = small
    return x, label, colour


@options_dataclass
class ColoredMnistOptions:
    """Training environments' colour agreements, the test environment's, and the label noise.

    The MNIST pool is cut into the test environment (``data.test_fraction``) and equal
    training environments, one per entry of ``agreement``; validation is carved from
    each training group (``data.val_fraction``), so it follows the training distribution.
    """

    agreement: tuple[float, ...] = (0.9, 0.8)
    test_agreement: float = 0.1
    label_noise: float = 0.25
    stride: int = 2  # 28x28 -> 14x14, as in the paper


def colored_group_name(colour: int, label: int) -> str:
    return f"{COLOURS[colour]}_y{label}"


@scenario("colored_mnist", ColoredMnistOptions)
def colored_mnist(cfg: DataConfig) -> ScenarioData:
    """Groups (colour, label): ``red_y0`` and ``green_y1`` are the majorities in training."""
    o = scenario_options(ColoredMnistOptions, cfg)
    rates = [*o.agreement, o.test_agreement, o.label_noise]
    if not o.agreement or any(not 0 <= r <= 1 for r in rates):
        raise ConfigError(f"data.options: agreement, test_agreement and label_noise must lie in [0, 1], got {rates}")
    if o.stride < 1:
        raise ConfigError(f"data.options.stride must be >= 1, got {o.stride}")
    images, digits = mnist_pool(cfg)
    share = (1 - cfg.test_fraction) / len(o.agreement)
    parts = split_fractions(len(digits), [share] * len(o.agreement) + [cfg.test_fraction], cfg.split_seed)
    envs = [
        colour_environment(images[p], digits[p], a, o.label_noise, cfg.split_seed + 11 + e, o.stride)
        for e, (p, a) in enumerate(zip(parts, [*o.agreement, o.test_agreement]))
    ]
    train_x = torch.cat([e[0] for e in envs[:-1]])
    train_y = torch.cat([e[1] for e in envs[:-1]])
    train_c = torch.cat([e[2] for e in envs[:-1]])
    test_x, test_y, test_c = envs[-1]
    groups = []
    for colour in (0, 1):
        for label in (0, 1):
            name = colored_group_name(colour, label)
            rows = torch.nonzero((train_c == colour) & (train_y == label)).squeeze(1)
            val, train = split_fractions(len(rows), [cfg.val_fraction, 1 - cfg.val_fraction], cfg.split_seed + 31)
            te = (test_c == colour) & (test_y == label)
            groups.append(
                GroupData(
                    name,
                    "colored",
                    Split(train_x[rows[train]], train_y[rows[train]]),
                    Split(train_x[rows[val]], train_y[rows[val]]),
                    Split(test_x[te], test_y[te]),
                    meta={"majority": colour == label},
                )
            )
    return ScenarioData(groups, 2)


@options_dataclass
class ConfoundedMnistOptions:
    """Which class carries the dots, how many corrected images the user supplies, the dots."""

    target_class: int = 8
    corrected: int = 100  # the pool size N of user-corrected images
    dots: int = 6  # number of dots, each ``dot_size`` x ``dot_size`` pixels
    dot_size: int = 2
    mask_seed: int = 0  # where the dots sit (one fixed pattern for every image)


@scenario("confounded_mnist", ConfoundedMnistOptions)
def confounded_mnist(cfg: DataConfig) -> ScenarioData:
    """The confounder-correction study: group ``confounded`` (every target-class image dotted) and group ``corrected``.

    ``corrected`` holds N training images of the target class with the dots removed,
    i.e. the masked pixels zeroed. Validation and test are clean MNIST: the clean
    target-class images are the ``corrected`` group's (the distribution it stands for),
    every other class is the ``confounded`` group's. ``acc_group:corrected`` is thus
    the target-class accuracy on clean images.
    """
    o = scenario_options(ConfoundedMnistOptions, cfg)
    if not 0 <= o.target_class < 10:
        raise ConfigError(f"data.options.target_class must be a digit 0-9, got {o.target_class}")
    if o.corrected < 1 or o.dots < 1 or o.dot_size < 1:
        raise ConfigError("data.options.corrected, dots and dot_size must be >= 1")
    x, y = mnist_pool(cfg)
    te, va = cfg.test_fraction, cfg.val_fraction
    test, val, train = split_fractions(len(y), [te, va, 1 - te - va], cfg.split_seed)
    mask = dot_mask(x.shape[-1], o.dots, o.dot_size, o.mask_seed)
    xtr, ytr = x[train].clone(), y[train]
    target = torch.nonzero(ytr == o.target_class).squeeze(1)
    if len(target) <= o.corrected:
        raise ConfigError(
            f"data.options.corrected={o.corrected} leaves no dotted class-{o.target_class} image "
            f"({len(target)} in the training split); lower it"
        )
    perm = torch.randperm(len(target), generator=torch.Generator().manual_seed(cfg.split_seed + 5))
    corr = target[perm[: o.corrected]].sort().values
    xtr[target] = torch.where(mask, 1.0, xtr[target])  # dots on every target-class training image
    keep = torch.ones(len(ytr), dtype=torch.bool)
    keep[corr] = False
    xc = torch.where(mask, 0.0, xtr[corr])  # the user's correction: masked pixels zeroed
    groups = []
    for name, is_target in (("confounded", False), ("corrected", True)):
        splits = []
        for part in (val, test):
            sel = (y[part] == o.target_class) == is_target
            splits.append(Split(x[part][sel], y[part][sel]))
        tr = Split(xc, ytr[corr]) if is_target else Split(xtr[keep], ytr[keep])
        groups.append(GroupData(name, "mnist", tr, *splits, meta={"mask": mask}))
    return ScenarioData(groups, 10, class_sets={f"class{o.target_class}": [o.target_class]})
