"""ColoredMNIST's colour environments, the maths of the ``colored_mnist`` source
(``fedanchors.data.sources.colored_mnist``)."""

from __future__ import annotations

import torch

from fedanchors.data.transforms import exact_subset


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
