"""FEMNIST (LEAF): 62 classes of handwritten digits and letters, each writer a natural client.

This file is the whole source: one loader and one decorator. Writers are the units a
fraction splits (groups of FEMNIST get disjoint writers) and each keeps LEAF's own test
split; ``writers: [...]`` selects writers by id and ``federated.partition: natural`` (or a
group's ``partition: {kind: natural}``) makes each writer a client.
"""

from dataclasses import dataclass

import torch

from fedanchors.data.base import data_root, split_fractions
from fedanchors.data.femnist import NUM_CLASSES, load_leaf
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.errors import DataError


@dataclass(frozen=True)
class FemnistOptions:
    """``val_per_writer: true``: each writer's validation images are carved from its own
    training images (``data.val_fraction``, seed ``data.split_seed`` + the writer's index), as
    LEAF's per-writer splits suggest; ``false``: a group's validation split is cut from its
    training pool like any source's."""

    val_per_writer: bool = False


@source(
    "femnist",
    options=FemnistOptions,
    classes=NUM_CLASSES,
    modality="image",
    shape=(1, 28, 28),
    official_test=True,
    owners="writers",
    units=True,
)
def femnist(cfg, options: FemnistOptions) -> SourceData:
    """LEAF FEMNIST, 28x28 ink-bright in [0, 1]; writers' own train/test split."""
    data = load_leaf(data_root(cfg) / "femnist")
    writers = sorted(w for w in data["train"] if w in data["test"])
    if not writers:
        raise DataError(f"{data_root(cfg) / 'femnist'}: no writer has both a train and a test file")

    def pool(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> Pool:
        xs, ys = zip(*parts)
        unit = torch.cat([torch.full((len(y),), i) for i, y in enumerate(ys)])
        return Pool(torch.cat(xs), torch.cat(ys), [writers[i] for i in unit.tolist()], unit)

    test = pool([data["test"][w] for w in writers])
    if not options.val_per_writer:
        return SourceData(pool([data["train"][w] for w in writers]), test)
    train, val = [], []
    for wi, w in enumerate(writers):
        x, y = data["train"][w]
        v, t = split_fractions(len(y), [cfg.val_fraction, 1 - cfg.val_fraction], cfg.split_seed + wi)
        train.append((x[t], y[t]))
        val.append((x[v], y[v]))
    return SourceData(pool(train), test, val=pool(val))
