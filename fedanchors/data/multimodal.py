"""Heterogeneous input spaces for real: images + spoken digits, and three pixel sizes."""

from __future__ import annotations

from dataclasses import field

import torch

from fedanchors.config import DataConfig
from fedanchors.data.audio import SAMPLE_RATE, load_fsdd, log_mel
from fedanchors.data.base import (
    SCENARIOS,
    ScenarioData,
    Split,
    data_root,
    group_fractions,
    make_group,
    make_group_fixed_test,
    options_dataclass,
    resize,
    scenario_options,
    split_fractions,
)
from fedanchors.data.digits import load_uci_digits
from fedanchors.data.mnist import mnist_pool
from fedanchors.errors import ConfigError


@options_dataclass
class MnistAudioOptions:
    """Share of the MNIST pool for the image group; log-mel settings for the audio group."""

    image_fraction: float = 0.5
    n_mels: int = 32
    n_fft: int = 256
    hop: int = 128
    seconds: float = 1.0


def spectrograms(waves: torch.Tensor, opts: MnistAudioOptions) -> torch.Tensor:
    """(N, L) -> (N, 1, n_mels, T) log-mel, in chunks to bound memory."""
    parts = [log_mel(w, SAMPLE_RATE, opts.n_fft, opts.hop, opts.n_mels) for w in torch.split(waves, 512)]
    return torch.cat(parts).unsqueeze(1)


@SCENARIOS.register("mnist_audio")
def mnist_audio(cfg: DataConfig) -> ScenarioData:
    """System 2: group ``image`` (MNIST 28x28) and group ``audio`` (FSDD log-mel), same 10 digits.

    FSDD keeps its official split (recordings 0-4 of each speaker and digit are test);
    validation is carved from the rest with ``data.split_seed``. Spectrograms are
    standardised with the audio training split's mean and standard deviation.
    """
    opts = scenario_options(MnistAudioOptions, cfg)
    if not 0 < opts.image_fraction <= 1:
        raise ConfigError(f"data.options.image_fraction must be in (0, 1], got {opts.image_fraction}")
    x, y = mnist_pool(cfg)
    (idx,) = split_fractions(len(y), [opts.image_fraction], cfg.split_seed)
    image = make_group("image", "image", x[idx], y[idx], cfg, cfg.split_seed + 1)
    fsdd = load_fsdd(data_root(cfg) / "fsdd", opts.seconds)
    if "test" not in fsdd or "train" not in fsdd:
        raise ConfigError("FSDD needs recordings with index 0-4 (test) and 5-49 (train); some are missing")
    xtr, ytr = spectrograms(fsdd["train"][0], opts), fsdd["train"][1]
    xte, yte = spectrograms(fsdd["test"][0], opts), fsdd["test"][1]
    mean, std = xtr.mean(), xtr.std()
    audio = make_group_fixed_test(
        "audio", "audio", (xtr - mean) / std, ytr, Split((xte - mean) / std, yte), cfg, cfg.split_seed + 2
    )
    return ScenarioData([image, audio], 10)


@options_dataclass
class Digits3WayOptions:
    """Disjoint shares of the MNIST pool for the 28x28 and the 32x32 groups."""

    fractions: dict[str, float] = field(default_factory=lambda: {"mnist28": 0.5, "mnist32": 0.5})


@SCENARIOS.register("digits_3way")
def digits_3way(cfg: DataConfig) -> ScenarioData:
    """Three pixel-size groups, each its own encoder: UCI 8x8, MNIST 28x28, MNIST 32x32."""
    opts = scenario_options(Digits3WayOptions, cfg)
    names = ["mnist28", "mnist32"]
    xd, yd = load_uci_digits()
    groups = [make_group("digits8", "px8", xd, yd, cfg, cfg.split_seed + 1)]
    x, y = mnist_pool(cfg)
    parts = split_fractions(len(y), group_fractions(opts.fractions, names), cfg.split_seed)
    for i, (name, p) in enumerate(zip(names, parts)):
        side = 28 if name == "mnist28" else 32
        groups.append(make_group(name, f"px{side}", resize(x[p], side), y[p], cfg, cfg.split_seed + 2 + i))
    return ScenarioData(groups, 10)
