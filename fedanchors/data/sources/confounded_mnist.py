"""Confounded MNIST (the confounder-correction study) as a source: every training image of
the target class carries a fixed pattern of dots, except ``corrected`` of them, from which the
user removed the dots (the masked pixels zeroed). Validation and test are clean MNIST.

Each example carries ``corrected``: 1 for the user-corrected training images and for the
clean target-class images of validation and test (the distribution they stand for), 0
otherwise. Groups take ``where: {corrected: 0}`` (``confounded``) and ``where: {corrected:
1}`` (``corrected``), both the whole source (``fraction: 1``). The split: test
(``data.test_fraction``), validation (``data.val_fraction``) and training, seeded by
``data.split_seed``; the corrected images are drawn with seed ``split_seed + 5``.
"""

from dataclasses import dataclass

import torch

from fedanchors.data.base import split_fractions
from fedanchors.data.mnist import mnist_pool
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.data.transforms import dot_mask
from fedanchors.errors import ConfigError


@dataclass(frozen=True)
class ConfoundedMnistOptions:
    """Which class carries the dots, how many corrected images the user supplies, the dots."""

    target_class: int = 8
    corrected: int = 100  # the pool size N of user-corrected images
    dots: int = 6  # number of dots, each ``dot_size`` x ``dot_size`` pixels
    dot_size: int = 2
    mask_seed: int = 0  # where the dots sit (one fixed pattern for every image)


@source("confounded_mnist", classes=10, modality="image", shape=(1, 28, 28), options=ConfoundedMnistOptions,
        official_test=True, attrs=("corrected",))  # fmt: skip
def confounded_mnist(cfg, o: ConfoundedMnistOptions) -> SourceData:
    """MNIST with the target class dotted in training, but for ``corrected`` images; clean val/test."""
    if not 0 <= o.target_class < 10:
        raise ConfigError(f"confounded_mnist options: target_class must be a digit 0-9, got {o.target_class}")
    if o.corrected < 1 or o.dots < 1 or o.dot_size < 1:
        raise ConfigError("confounded_mnist options: corrected, dots and dot_size must be >= 1")
    x, y = mnist_pool(cfg)
    te, va = cfg.test_fraction, cfg.val_fraction
    test, val, train = split_fractions(len(y), [te, va, 1 - te - va], cfg.split_seed)
    mask = dot_mask(x.shape[-1], o.dots, o.dot_size, o.mask_seed)
    xtr, ytr = x[train].clone(), y[train]
    target = torch.nonzero(ytr == o.target_class).squeeze(1)
    if len(target) <= o.corrected:
        raise ConfigError(
            f"confounded_mnist options: corrected={o.corrected} leaves no dotted class-{o.target_class} image "
            f"({len(target)} in the training split); lower it"
        )
    perm = torch.randperm(len(target), generator=torch.Generator().manual_seed(cfg.split_seed + 5))
    corr = target[perm[: o.corrected]].sort().values
    xtr[target] = torch.where(mask, 1.0, xtr[target])  # dots on every target-class training image
    keep = torch.ones(len(ytr), dtype=torch.bool)
    keep[corr] = False
    xc = torch.where(mask, 0.0, xtr[corr])  # the user's correction: masked pixels zeroed
    n_keep = int(keep.sum())
    flag = torch.cat([torch.zeros(n_keep, dtype=torch.int64), torch.ones(len(corr), dtype=torch.int64)])
    pool = Pool(torch.cat([xtr[keep], xc]), torch.cat([ytr[keep], ytr[corr]]), attrs={"corrected": flag})

    def clean(idx: torch.Tensor) -> Pool:
        return Pool(x[idx], y[idx], attrs={"corrected": (y[idx] == o.target_class).long()})

    return SourceData(pool, clean(test), val=clean(val), meta={"mask": mask})
