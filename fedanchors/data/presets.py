"""Named presets: shipped scenarios written as group lists (``data.scenario: digits`` and so on).

A preset turns its ``data.options`` into the same ``data.groups`` a user could write;
``python -m fedanchors.simulate --config X --print-config`` prints that list. The
scenarios whose groups are cut after a shared construction (ColoredMNIST's environments,
confounded MNIST's clean test, MNIST-LT's shared balanced test, FEMNIST's per-writer
validation, TextCaps, Waterbirds) stay Python functions in ``SCENARIOS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedanchors.data.base import group_fractions
from fedanchors.data.digits import DigitsOptions
from fedanchors.data.mnist import MnistHeteroOptions
from fedanchors.data.multimodal import Digits3WayOptions, MnistAudioOptions
from fedanchors.errors import ConfigError
from fedanchors.registry import Registry


@dataclass(frozen=True)
class Preset:
    options: type
    expand: Callable  # options -> list of group dicts


PRESETS: Registry[Preset] = Registry("preset")


def preset(name: str, options: type) -> Callable:
    """Decorator: register ``expand(options) -> [group dict, ...]`` as preset ``name``."""

    def deco(fn: Callable) -> Callable:
        PRESETS.register(name)(Preset(options, fn))
        return fn

    return deco


@preset("digits", DigitsOptions)
def digits(o: DigitsOptions) -> list[dict]:
    """UCI digits as two pixel-size groups: ``digits8`` (8x8) and ``digits16`` (16x16)."""
    names = ["digits8", "digits16"]
    sizes = group_fractions(o.sizes, names)
    if any(s < 8 or s != int(s) for s in sizes):
        raise ConfigError(f"data.options.sizes must be whole pixel sizes >= 8, got {o.sizes}")
    fractions = group_fractions(o.fractions, names)
    return [
        {"name": n, "source": "uci_digits", "fraction": f, "resize": int(s), "space": f"px{int(s)}"}
        for n, f, s in zip(names, fractions, sizes)
    ]


@preset("mnist_hetero", MnistHeteroOptions)
def mnist_hetero(o: MnistHeteroOptions) -> list[dict]:
    """The pixel-size study: MNIST at 28x28 and resized to 32x32, each its own input space."""
    fractions = group_fractions(o.fractions, ["mnist28", "mnist32"])
    opts = {} if o.pool else {"options": {"pool": False}}
    return [
        {"name": "mnist28", "source": "mnist", "fraction": fractions[0], "space": "mnist28", **opts},
        {"name": "mnist32", "source": "mnist", "fraction": fractions[1], "resize": 32, "space": "mnist32", **opts},
    ]


@preset("mnist_audio", MnistAudioOptions)
def mnist_audio(o: MnistAudioOptions) -> list[dict]:
    """The two-modality study: group ``image`` (MNIST 28x28) and group ``audio`` (FSDD log-mel), same digits."""
    if not 0 < o.image_fraction <= 1:
        raise ConfigError(f"data.options.image_fraction must be in (0, 1], got {o.image_fraction}")
    features = {"kind": "log_mel", "n_mels": o.n_mels, "n_fft": o.n_fft, "hop": o.hop}
    return [
        {"name": "image", "source": "mnist", "fraction": o.image_fraction, "space": "image"},
        {"name": "audio", "source": "fsdd", "options": {"seconds": o.seconds}, "features": features, "space": "audio"},
    ]


@preset("digits_3way", Digits3WayOptions)
def digits_3way(o: Digits3WayOptions) -> list[dict]:
    """Three pixel-size groups: UCI 8x8, MNIST 28x28 and MNIST 32x32 (disjoint MNIST shares)."""
    fractions = group_fractions(o.fractions, ["mnist28", "mnist32"])
    return [
        {"name": "digits8", "source": "uci_digits", "space": "px8"},
        {"name": "mnist28", "source": "mnist", "fraction": fractions[0], "space": "px28"},
        {"name": "mnist32", "source": "mnist", "fraction": fractions[1], "resize": 32, "space": "px32"},
    ]
