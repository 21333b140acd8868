"""Waterbirds (Sagawa et al. 2020) from its standard folder: ``metadata.csv`` and the images.

``metadata.csv`` has columns ``img_filename, y, place, split`` (y: 0 landbird, 1
waterbird; place: 0 land, 1 water; split: 0 train, 1 val, 2 test); ``img_filename``
is relative to the folder. Groups are (bird, place), each a client; all share the
``rgb`` input space and its encoder (ResNet-18 in the shipped config).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedanchors.config import DataConfig
from fedanchors.data.base import check_labels, data_root
from fedanchors.errors import ConfigError, DataError

BIRDS = ("landbird", "waterbird")
PLACES = ("land", "water")
_COLUMNS = ("img_filename", "y", "place", "split")
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class WaterbirdsOptions:
    """The dataset folder (relative to data.root, or absolute) and the square image side."""

    folder: str = "waterbird_complete95_forest2water2"
    size: int = 64  # 224 in the paper; 64 keeps a CPU run practical


def waterbirds_dir(cfg: DataConfig, folder: str) -> Path:
    """The folder holding ``metadata.csv``: <root>/<folder>, <root>/waterbirds/<folder> or <root>."""
    root = data_root(cfg)
    candidates = [Path(folder), root / folder, root / "waterbirds" / folder, root]
    for c in candidates:
        if (c / "metadata.csv").is_file():
            return c
    raise DataError(
        f"no Waterbirds metadata.csv in {root / folder}; put the Waterbirds folder (metadata.csv and the "
        "images) there, or set the group's options.folder / data.root to where it is"
    )


def read_metadata(path: Path) -> list[dict]:
    """Rows of metadata.csv with the four columns as ints (and the file name)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks column(s) {missing}; expected {', '.join(_COLUMNS)}")
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                rows.append({"img_filename": r["img_filename"], **{k: int(float(r[k])) for k in _COLUMNS[1:]}})
            except (TypeError, ValueError):
                raise DataError(f"{path} line {i}: y, place and split must be integers; fix the row") from None
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def load_image(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8; an unreadable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace it with an intact copy") from None


def load_waterbirds(cfg: DataConfig, o: WaterbirdsOptions, key: str) -> tuple[torch.Tensor, ...]:
    """(x normalised (N, 3, size, size), y, place, split) of every row of metadata.csv;
    ``key`` names the options in errors (a group's ``options``)."""
    if o.size < 8:
        raise ConfigError(f"{key}.size must be >= 8, got {o.size}")
    folder = waterbirds_dir(cfg, o.folder)
    rows = read_metadata(folder / "metadata.csv")
    x = torch.from_numpy(np.stack([load_image(folder / r["img_filename"], o.size) for r in rows]))
    x = (x.float().div_(255) - _MEAN) / _STD
    y, place, split = (torch.tensor([r[k] for r in rows]) for k in ("y", "place", "split"))
    check_labels(y, 2, folder / "metadata.csv")
    check_labels(place, 2, folder / "metadata.csv", "place")
    return x, y, place, split
