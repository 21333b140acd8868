"""Groups written in YAML: the typed entries of ``data.groups`` (no torch, no data read here).

Each entry says where a group's examples come from (a registered *source*), which of them
it takes (*selection*) and what is done to them (*transforms*). ``fedanchors.data.groups``
builds the data; ``check_groups`` there validates a list before any file is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ColourSpec:
    """ColoredMNIST (Arjovsky et al. 2019): label ``y < C/2`` (C the source's classes) flipped
    for exactly ``label_noise`` of the examples, drawn in channel 0 (red, colour 0) or 1
    (green) with the colour equal to that label for exactly ``agreement`` of them. The test
    split uses ``test_agreement`` (-1: the same as ``agreement``)."""

    agreement: float = 1.0
    test_agreement: float = -1.0
    label_noise: float = 0.25
    stride: int = 2  # 28x28 -> 14x14, as in the paper


@dataclass(frozen=True)
class DotsSpec:
    """The confounder-correction study's confounder: ``n`` fixed ``size`` x ``size`` dots (pattern from ``seed``) set
    to 1 on the images of ``classes`` (all when empty) in ``splits``; ``remove: true`` then
    zeroes the masked pixels (the user's correction of a dotted image)."""

    n: int = 6
    size: int = 2
    seed: int = 0
    classes: tuple[int, ...] = ()
    splits: tuple[str, ...] = ("train", "val", "test")
    remove: bool = False


@dataclass(frozen=True)
class FeatureSpec:
    """Audio front end on waveforms: log-mel spectrograms (``torch.stft`` + HTK mel bank),
    standardised with the group's training statistics."""

    kind: str = "log_mel"
    n_mels: int = 32
    n_fft: int = 256
    hop: int = 128
    standardize: bool = True


@dataclass(frozen=True)
class PartitionSpec:
    """How a group's training split is cut among its clients (``federated.partition`` per group)."""

    kind: str = "iid"
    alpha: float = 0.5
    labels: int = 2


@dataclass(frozen=True)
class GroupSpec:
    """One group of ``data.groups``."""

    name: str = ""
    source: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # the source's own (e.g. fsdd: seconds)
    # selection
    fraction: float = -1.0  # share of the source, disjoint from its other groups (-1: an equal share of the rest)
    count: int = 0  # keep exactly this many examples of the share (0: all)
    classes: tuple[int, ...] = ()  # keep these labels (empty: all)
    imbalance: float = 1.0  # > 1: long-tailed training split n_c = n_max * imbalance^(-c / (C - 1))
    speakers: tuple[str, ...] = ()  # sources with speakers (fsdd)
    writers: tuple[str, ...] = ()  # sources with writers (femnist)
    where: dict[str, int] = field(default_factory=dict)  # per-example attributes, e.g. waterbirds {place: 1}
    # transforms, applied in this order
    resize: int | None = None  # pixels (4..1024); None: the source's own size
    dots: DotsSpec | None = None
    colour: ColourSpec | None = None
    greyscale: bool = False
    features: FeatureSpec | None = None
    # which encoder: "" derives it from the resulting shape and modality
    space: str = ""
    majority: bool | None = None  # recorded in the group's meta (reports only)
    # population (federated): 0 / None fall back to federated.clients / federated.partition
    clients: int = 0
    partition: PartitionSpec | None = None


SELECTION_KEYS = ("fraction", "count", "classes", "imbalance", "speakers", "writers", "where")
TRANSFORM_KEYS = ("resize", "dots", "colour", "greyscale", "features")


def compact(spec: Any) -> dict:
    """The fields of a spec that differ from their defaults (nested specs compacted too; a
    ``kind`` always kept), as plain YAML-ready values: what a user would have written."""
    out: dict = {}
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if v == default and f.name != "kind":  # a kind is kept: {kind: log_mel} reads better than {}
            continue
        if dataclasses.is_dataclass(v):
            v = compact(v) or {}
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out
