"""Sources: where a YAML group's examples come from. Each is one file here with one decorator.

A source is a function ``load(cfg: DataConfig, options) -> SourceData`` registered with
``@source(name, ...)``, which also declares what can be checked before any file is read:
its labels, its modality, the shape of one example (given its options), whether it has an
official test split and who its examples belong to (speakers, writers). Every module in this
package is imported when the package is, so a new source needs no edit elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedanchors.registry import Registry


@dataclass
class Pool:
    """Examples of one official split: inputs, labels, and optionally who each belongs to.

    ``units``: the index of the indivisible unit each example belongs to (a writer, an image
    with several captions): groups of one source are then given disjoint units, not rows.
    """

    x: torch.Tensor
    y: torch.Tensor
    owners: list[str] | None = None
    units: torch.Tensor | None = None
    attrs: dict[str, torch.Tensor] = field(default_factory=dict)  # per-example attributes (``where:``)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: torch.Tensor) -> Pool:
        owners = [self.owners[i] for i in idx.tolist()] if self.owners is not None else None
        units = self.units[idx] if self.units is not None else None
        return Pool(self.x[idx], self.y[idx], owners, units, {k: v[idx] for k, v in self.attrs.items()})


@dataclass
class SourceData:
    """A loaded source: the pool to split (``train``), the official test split and the official
    validation split, if any (a source with an official validation split has a test split too)."""

    train: Pool
    test: Pool | None = None
    meta: dict = field(default_factory=dict)  # e.g. a text source's vocab_size and vocab
    val: Pool | None = None


@dataclass(frozen=True)
class Source:
    """A registered source and what is known about it before loading."""

    name: str
    load: Callable[..., SourceData]
    options: type | None  # a frozen dataclass of the source's own options, or None
    classes: Callable[[Any], int]  # number of labels, given the options
    modality: Callable[[Any], str]  # image | audio (waveforms) | text (token ids), given the options
    shape: Callable[[Any], tuple[int, ...]]  # one example's shape, given the options
    official_test: bool = False
    owners: str = ""  # "speakers" | "writers" | ""
    units: bool = False  # groups of this source split units (see Pool), not rows
    attrs: tuple[str, ...] = ()  # per-example attributes a group can select with ``where:``
    doc: str = ""


SOURCES: Registry[Source] = Registry("source")


def source(
    name: str,
    *,
    classes: int | Callable[[Any], int],
    modality: str | Callable[[Any], str],
    shape: tuple[int, ...] | Callable[[Any], tuple[int, ...]],
    options: type | None = None,
    official_test: bool = False,
    owners: str = "",
    units: bool = False,
    attrs: tuple[str, ...] = (),
) -> Callable:
    """Decorator: register ``load(cfg, options) -> SourceData`` as source ``name``."""

    def deco(fn: Callable[..., SourceData]) -> Callable[..., SourceData]:
        SOURCES.register(name)(
            Source(
                name,
                fn,
                options,
                classes if callable(classes) else (lambda _o, c=classes: c),
                modality if callable(modality) else (lambda _o, m=modality: m),
                shape if callable(shape) else (lambda _o, s=tuple(shape): s),
                official_test,
                owners,
                units,
                tuple(attrs),
                (fn.__doc__ or "").strip().split("\n")[0],
            )
        )
        return fn

    return deco


for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
