"""What a YAML group does to its examples: resize, dots, colour, greyscale, audio features.

``derive`` follows a group's shape and modality through its transforms without data (so a
config is checked before anything is read); the other functions apply them to tensors.
"""

from __future__ import annotations

import math

import torch

from fedanchors.data.audio import SAMPLE_RATE, log_mel
from fedanchors.data.base import resize
from fedanchors.errors import ConfigError
from fedanchors.group_spec import ColourSpec, DotsSpec, FeatureSpec, GroupSpec

FEATURES = ("log_mel",)
MAX_SIDE = 1024  # the largest image side a resize may ask for


def derive(spec: GroupSpec, modality: str, shape: tuple[int, ...], key: str) -> tuple[str, tuple[int, ...]]:
    """(modality, shape) after ``spec``'s transforms; a transform that does not fit is a ConfigError."""

    def need(kind: str, what: str) -> None:
        if modality != kind:
            raise ConfigError(f"{key}.{what}: applies to {kind} groups, but source {spec.source} gives {modality}")

    if spec.resize is not None:
        need("image", "resize")
        if not 4 <= spec.resize <= MAX_SIDE:
            raise ConfigError(
                f"{key}.resize must be 4..{MAX_SIDE} pixels, got {spec.resize}; omit it to keep the source's size"
            )
        shape = (shape[0], spec.resize, spec.resize)
    if spec.dots is not None:
        need("image", "dots")
        d = spec.dots
        if d.n < 1 or d.size < 1 or (shape[-1] // d.size) ** 2 < d.n:
            raise ConfigError(f"{key}.dots: n={d.n} dots of size {d.size} do not fit a {shape[-1]}-pixel image")
        bad = [s for s in d.splits if s not in ("train", "val", "test")]
        if bad:
            raise ConfigError(f"{key}.dots.splits: {bad} are not splits; use train, val and/or test")
    if spec.colour is not None:
        need("image", "colour")
        c = spec.colour
        rates = [c.agreement, c.label_noise] + ([c.test_agreement] if c.test_agreement != -1 else [])
        if any(not 0 <= r <= 1 for r in rates) or c.stride < 1:
            raise ConfigError(f"{key}.colour: agreement, test_agreement and label_noise in [0, 1], stride >= 1")
        if shape[0] != 1:
            raise ConfigError(f"{key}.colour: needs a one-channel image, got {shape[0]} channels (add greyscale)")
        shape = (2, math.ceil(shape[1] / c.stride), math.ceil(shape[2] / c.stride))
    if spec.greyscale:
        need("image", "greyscale")
        shape = (1, *shape[1:])
    if spec.features is not None:
        need("audio", "features")
        f = spec.features
        if f.kind not in FEATURES:
            raise ConfigError(f"{key}.features.kind: {f.kind!r} is not one of {', '.join(FEATURES)}")
        if f.n_mels < 1 or f.hop < 1 or f.n_fft < 2:
            raise ConfigError(f"{key}.features: n_mels and hop must be >= 1, n_fft >= 2")
        if f.n_fft > shape[0] or f.hop > shape[0]:
            raise ConfigError(
                f"{key}.features: n_fft={f.n_fft} and hop={f.hop} must be at most the {shape[0]} samples of a waveform"
            )
        if f.n_mels > f.n_fft // 2 + 1:
            raise ConfigError(
                f"{key}.features.n_mels={f.n_mels} exceeds the n_fft // 2 + 1 = {f.n_fft // 2 + 1} frequency bins"
            )
        modality, shape = "spectrogram", (1, f.n_mels, 1 + shape[0] // f.hop)
    if modality == "audio":
        raise ConfigError(f"{key}: source {spec.source} gives waveforms; add features: {{kind: log_mel}}")
    return modality, shape


def space_name(modality: str, shape: tuple[int, ...]) -> str:
    """The derived input space: ``px28`` for a square one-channel image, else modality and shape."""
    if modality == "image" and shape[0] == 1 and shape[1] == shape[2]:
        return f"px{shape[1]}"
    if modality == "text":
        return f"text{shape[0]}"
    return modality + "x".join(str(s) for s in shape)


def spectrograms(waves: torch.Tensor, f: FeatureSpec) -> torch.Tensor:
    """(N, L) -> (N, 1, n_mels, T) log-mel, in chunks to bound memory."""
    parts = [log_mel(w, SAMPLE_RATE, f.n_fft, f.hop, f.n_mels) for w in torch.split(waves, 512)]
    return torch.cat(parts).unsqueeze(1) if parts else torch.zeros(0, 1, f.n_mels, 1 + waves.shape[-1] // f.hop)


def dot_mask(side: int, dots: int, size: int, seed: int) -> torch.Tensor:
    """A fixed (side, side) boolean mask of ``dots`` non-overlapping square dots."""
    gen = torch.Generator().manual_seed(seed)
    cells = side // size
    chosen = torch.randperm(cells * cells, generator=gen)[:dots]
    mask = torch.zeros(side, side, dtype=torch.bool)
    for c in chosen.tolist():
        r, k = divmod(c, cells)
        mask[r * size : (r + 1) * size, k * size : (k + 1) * size] = True
    return mask


def add_dots(x: torch.Tensor, y: torch.Tensor, d: DotsSpec) -> torch.Tensor:
    """Dots (1.0) on the images of ``d.classes`` (all when empty); ``remove`` zeroes them after."""
    mask = dot_mask(x.shape[-1], d.n, d.size, d.seed)
    rows = torch.isin(y, torch.tensor(d.classes, dtype=y.dtype)) if d.classes else torch.ones(len(y), dtype=torch.bool)
    out = x.clone()
    out[rows] = torch.where(mask, 0.0 if d.remove else 1.0, x[rows])
    return out


def exact_subset(n: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask with exactly round(fraction * n) seeded-random entries set."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: round(fraction * n)]] = True
    return mask


def colour(
    x: torch.Tensor, y: torch.Tensor, c: ColourSpec, num_classes: int, test: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ColoredMNIST with exact rates: binary label ``y < C/2`` flipped for round(label_noise n)
    examples, colour = that label for round(agreement n); downsampled by ``stride``."""
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    agreement = c.test_agreement if test and c.test_agreement != -1 else c.agreement
    label = (y < num_classes // 2).long() ^ exact_subset(n, c.label_noise, gen).long()
    hue = label ^ exact_subset(n, 1.0 - agreement, gen).long()
    small = x[:, 0, :: c.stride, :: c.stride]
    out = torch.zeros(n, 2, *small.shape[1:])
    out[torch.arange(n), hue] = small
    return out, label


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """One channel: ITU-R 601 luminance of RGB, the sum of other channel counts (colour removed)."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.sum(1, keepdim=True)


def image_transforms(
    spec: GroupSpec, x: torch.Tensor, y: torch.Tensor, split: str, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """resize, dots, colour, greyscale (in that order) on one split of an image group."""
    if spec.resize is not None:
        x = resize(x, spec.resize)
    if spec.dots is not None and split in spec.dots.splits:
        x = add_dots(x, y, spec.dots)
    if spec.colour is not None:
        x, y = colour(x, y, spec.colour, num_classes, split == "test", seed)
    if spec.greyscale:
        x = greyscale(x)
    return x, y


def longtail(y: torch.Tensor, imbalance: float) -> torch.Tensor:
    """Rows kept for an exponential long tail (Cao et al. 2019) over the labels present, in
    label order: n_c = round(n_max * imbalance^(-rank / (K - 1))), n_max the smallest class."""
    labels = torch.unique(y).tolist()
    counts = [int((y == c).sum()) for c in labels]
    k, n_max = len(labels), min(counts) if counts else 0
    keep = []
    for rank, c in enumerate(labels):
        n = max(1, round(n_max * imbalance ** (-rank / max(1, k - 1))))
        keep.append(torch.nonzero(y == c).squeeze(1)[:n])
    return torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.int64)
