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
    """Birds (0 land, 1 water) on places (attribute ``place``); official train+val / test split."""
    x, y, place, split = load_waterbirds(cfg, o, "waterbirds options")
    train, test = (torch.nonzero(m).squeeze(1) for m in (split < 2, split == 2))
    return SourceData(*(Pool(x[i], y[i], attrs={"place": place[i]}) for i in (train, test)))
