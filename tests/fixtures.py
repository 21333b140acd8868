"""Small data sets generated in the exact on-disk layout of datasets we cannot ship."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ["Vehicle", "Sign", "Bottle", "Book", "Clock"]
WORDS = {
    "Vehicle": "a red car parked",
    "Sign": "a stop sign on a street",
    "Bottle": "a bottle of wine",
    "Book": "the cover of a book",
    "Clock": "a clock on the wall",
}


def make_textcaps(root: Path, n_train: int = 40, n_val: int = 15, captions: int = 2) -> Path:
    """``root/textcaps`` with TextCaps_0.1_{train,val}.json and train_images/<id>.jpg.

    Each image gets one dominant class (coloured distinctly, captioned with its words) and
    sometimes a rarer second class, as real TextCaps entries carry several classes.
    """
    from PIL import Image

    base = root / "textcaps"
    (base / "train_images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        data = []
        for i in range(n):
            c = CLASSES[i % len(CLASSES)]
            classes = [c] + ([CLASSES[(i + 1) % len(CLASSES)]] if i % 3 == 0 else [])
            image_id = f"{split}{i:04d}"
            colour = np.zeros((24, 24, 3), np.uint8)
            colour[..., CLASSES.index(c) % 3] = 60 + 40 * (CLASSES.index(c))
            colour = np.clip(colour + rng.integers(0, 20, colour.shape), 0, 255).astype(np.uint8)
            Image.fromarray(colour).save(base / "train_images" / f"{image_id}.jpg")
            for k in range(captions):
                data.append(
                    {
                        "image_id": image_id,
                        "image_classes": classes,
                        "caption_id": k,
                        "caption_str": f"{WORDS[c]} number {k}",
                        "image_path": f"train/{image_id}.jpg",
                        "image_width": 24,
                        "image_height": 24,
                    }
                )
        name = "TextCaps_0.1_train.json" if split == "train" else "TextCaps_0.1_val.json"
        (base / name).write_text(json.dumps({"dataset_type": split, "dataset_name": "textcaps", "data": data}))
    return base


def make_waterbirds(root: Path, per_cell: int = 2, size: int = 24) -> Path:
    """``root/waterbird_complete95_forest2water2``: metadata.csv and JPEGs in class folders.

    ``per_cell`` images for each (bird, place, split); the background colour encodes the
    place (water blue, land green) and a central patch the bird (bright or dark), so a
    loader that mixes up columns fails the tests.
    """
    from PIL import Image

    base = root / "waterbird_complete95_forest2water2"
    rows = ["img_filename,y,place,split"]
    k = 0
    for split in (0, 1, 2):
        for bird in (0, 1):
            for place in (0, 1):
                for _ in range(per_cell):
                    folder = base / f"{k % 3:03d}.Species_{bird}"
                    folder.mkdir(parents=True, exist_ok=True)
                    img = np.zeros((size, size, 3), dtype=np.uint8)
                    img[..., 2 if place else 1] = 200
                    img[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 250 if bird else 30
                    name = f"{folder.name}/bird_{k:04d}.jpg"
                    Image.fromarray(img).save(base / name, quality=95)
                    rows.append(f"{name},{bird},{place},{split}")
                    k += 1
    (base / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root
