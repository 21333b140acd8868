"""TextCaps (Sidorov et al. 2020): the annotation and image readers of the ``textcaps`` source.

Layout under ``<data.root>/textcaps`` (the official download):
  TextCaps_0.1_train.json, TextCaps_0.1_val.json   {"data": [{"image_id", "image_classes",
                                                     "caption_str", ...}, ...]}
  train_images/<image_id>.jpg                      (train and val images, as distributed)
Labels: the K most frequent ``image_classes`` over the training annotations; each entry is
labelled with its most frequent top-K class and dropped if it has none.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fedanchors.errors import DataError

FILES = {"train": "TextCaps_0.1_train.json", "test": "TextCaps_0.1_val.json"}


def read_annotations(path: Path) -> list[dict]:
    """The ``data`` list of a TextCaps JSON; missing or malformed -> DataError naming the file."""
    if not path.is_file():
        raise DataError(f"TextCaps annotations {path} not found; put the official JSON files in {path.parent}")
    try:
        data = json.loads(path.read_text())["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a TextCaps annotation file ({e}); replace it with the official one") from None
    return [d for d in data if "image_id" in d and "image_classes" in d]


def top_classes(entries: list[dict], k: int) -> list[str]:
    """The k most frequent image classes, counting each image once (ties alphabetical)."""
    per_image = {d["image_id"]: d["image_classes"] for d in entries}
    counts = Counter(c for classes in per_image.values() for c in set(classes))
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def label_entries(entries: list[dict], classes: list[str]) -> list[tuple[dict, int]]:
    """(entry, label) for entries holding a top-K class; label = its most frequent one."""
    rank = {c: i for i, c in enumerate(classes)}
    out = []
    for d in entries:
        hits = [rank[c] for c in d["image_classes"] if c in rank]
        if hits:
            out.append((d, min(hits)))
    return out


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB image resized to size x size, (3, size, size) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path} ({e}); replace it") from None
    return torch.from_numpy(arr).permute(2, 0, 1) / 255.0
