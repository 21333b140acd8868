"""Options of the multimodal and three-pixel-size presets (``fedanchors.data.presets``)."""

from __future__ import annotations

from dataclasses import field

from fedanchors.data.base import options_dataclass


@options_dataclass
class MnistAudioOptions:
    """Share of the MNIST pool for the image group; log-mel settings for the audio group."""

    image_fraction: float = 0.5
    n_mels: int = 32
    n_fft: int = 256
    hop: int = 128
    seconds: float = 1.0


@options_dataclass
class Digits3WayOptions:
    """Disjoint shares of the MNIST pool for the 28x28 and the 32x32 groups."""

    fractions: dict[str, float] = field(default_factory=lambda: {"mnist28": 0.5, "mnist32": 0.5})
