"""FEMNIST (LEAF): 62 classes of handwritten digits and letters, each writer a natural client.

This file is the whole source: one loader and one decorator. Writers are the units a
fraction splits (groups of FEMNIST get disjoint writers) and each keeps LEAF's own test
split; ``writers: [...]`` selects writers by id and ``federated.partition: natural`` (or a
group's ``partition: {kind: natural}``) makes each writer a client.
"""

import torch

from fedanchors.data.base import data_root
from fedanchors.data.femnist import NUM_CLASSES, load_leaf
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.errors import DataError


@source(
    "femnist",
    classes=NUM_CLASSES,
    modality="image",
    shape=(1, 28, 28),
    official_test=True,
    owners="writers",
    units=True,
)
def femnist(cfg, options) -> SourceData:
    """LEAF FEMNIST, 28x28 ink-bright in [0, 1]; writers' own train/test split."""
    data = load_leaf(data_root(cfg) / "femnist")
    writers = sorted(w for w in data["train"] if w in data["test"])
    if not writers:
        raise DataError(f"{data_root(cfg) / 'femnist'}: no writer has both a train and a test file")

    def pool(split: str) -> Pool:
        xs, ys = zip(*(data[split][w] for w in writers))
        unit = torch.cat([torch.full((len(y),), i) for i, y in enumerate(ys)])
        return Pool(torch.cat(xs), torch.cat(ys), [writers[i] for i in unit.tolist()], unit)

    return SourceData(pool("train"), pool("test"))
