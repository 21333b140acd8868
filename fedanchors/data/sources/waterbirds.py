"""Waterbirds (Sagawa et al. 2020) from its standard folder: ``metadata.csv`` and the images."""

import torch

from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.data.waterbirds import WaterbirdsOptions, load_waterbirds


@source(
    "waterbirds",
    classes=2,
    modality="image",
    shape=lambda o: (3, o.size, o.size),
    options=WaterbirdsOptions,
    official_test=True,
    attrs=("place",),
)
def waterbirds(cfg, o: WaterbirdsOptions) -> SourceData:
    """Birds (0 land, 1 water) on places (attribute ``place``); the official train / val / test splits."""
    x, y, place, split = load_waterbirds(cfg, o, "waterbirds options")
    train, val, test = (torch.nonzero(split == s).squeeze(1) for s in (0, 1, 2))
    train, test, val = (Pool(x[i], y[i], attrs={"place": place[i]}) for i in (train, test, val))
    return SourceData(train, test, val=val)
