"""Waterbirds (Sagawa et al. 2020) from its standard folder: ``metadata.csv`` and the images."""

import numpy as np
import torch

from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.data.waterbirds import _MEAN, _STD, WaterbirdsOptions, load_image, read_metadata, waterbirds_dir
from fedanchors.errors import DataError


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
    if o.size < 8:
        raise DataError(f"waterbirds options.size must be >= 8, got {o.size}")
    folder = waterbirds_dir(cfg, o.folder)
    rows = read_metadata(folder / "metadata.csv")
    x = torch.from_numpy(np.stack([load_image(folder / r["img_filename"], o.size) for r in rows]))
    x = (x.float().div_(255) - _MEAN) / _STD
    y, place, split = (torch.tensor([r[k] for r in rows]) for k in ("y", "place", "split"))
    if y.min() < 0 or y.max() > 1 or place.min() < 0 or place.max() > 1:
        raise DataError(f"{folder / 'metadata.csv'}: y and place must be 0 or 1; fix the file")
    train, test = (torch.nonzero(m).squeeze(1) for m in (split < 2, split == 2))
    return SourceData(*(Pool(x[i], y[i], attrs={"place": place[i]}) for i in (train, test)))
