"""TextCaps (Sidorov et al. 2020) as an image group and a caption group over top-K classes.

Layout under ``<data.root>/textcaps`` (the official download):
  TextCaps_0.1_train.json, TextCaps_0.1_val.json   {"data": [{"image_id", "image_classes",
                                                     "caption_str", ...}, ...]}
  train_images/<image_id>.jpg                      (train and val images, as distributed)
Labels: the K most frequent ``image_classes`` over the training annotations; each entry is
labelled with its most frequent top-K class and dropped if it has none. Image ids are split
disjointly between the groups: ``image`` sees the picture, ``text`` its captions.
Train annotations give train/val (seeded), the official val annotations give test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fedanchors.config import DataConfig
from fedanchors.data.base import (
    GroupData,
    ScenarioData,
    Split,
    data_root,
    options_dataclass,
    scenario,
    scenario_options,
    split_fractions,
)
from fedanchors.data.text import build_vocab, encode
from fedanchors.errors import ConfigError, DataError

FILES = {"train": "TextCaps_0.1_train.json", "test": "TextCaps_0.1_val.json"}


@options_dataclass
class TextCapsOptions:
    top_k: int = 10
    image_size: int = 64
    tokens: str = "word"  # word | char
    max_len: int = 32
    max_vocab: int = 5000
    image_fraction: float = 0.5


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


def _split_ids(labelled: list[tuple[dict, int]], fraction: float, seed: int) -> tuple[set, set]:
    ids = sorted({d["image_id"] for d, _ in labelled})
    img, txt = split_fractions(len(ids), [fraction, 1 - fraction], seed)
    return {ids[i] for i in img.tolist()}, {ids[i] for i in txt.tolist()}


def _images(labelled, ids, folder: Path, size: int) -> Split:
    seen, xs, ys = set(), [], []
    for d, y in labelled:
        if d["image_id"] in ids and d["image_id"] not in seen:
            seen.add(d["image_id"])
            xs.append(load_image(folder / f"{d['image_id']}.jpg", size))
            ys.append(y)
    return Split(torch.stack(xs) if xs else torch.zeros(0, 3, size, size), torch.tensor(ys, dtype=torch.int64))


def _captions(labelled, ids) -> tuple[list[str], torch.Tensor]:
    pairs = [(d.get("caption_str", ""), y) for d, y in labelled if d["image_id"] in ids]
    return [p[0] for p in pairs], torch.tensor([p[1] for p in pairs], dtype=torch.int64)


@scenario("textcaps", TextCapsOptions)
def textcaps(cfg: DataConfig) -> ScenarioData:
    """The two-modality study: an ``image`` group and a ``text`` group over TextCaps' top-K classes."""
    o = scenario_options(TextCapsOptions, cfg)
    if o.tokens not in ("word", "char"):
        raise ConfigError(f"data.options.tokens must be word or char, got {o.tokens!r}")
    root = data_root(cfg) / "textcaps"
    train_all = read_annotations(root / FILES["train"])
    classes = top_classes(train_all, o.top_k)
    lab = {
        "train": label_entries(train_all, classes),
        "test": label_entries(read_annotations(root / FILES["test"]), classes),
    }
    folder = root / "train_images"
    ids = {s: _split_ids(lab[s], o.image_fraction, cfg.split_seed + i) for i, s in enumerate(lab)}
    img_tr = _images(lab["train"], ids["train"][0], folder, o.image_size)
    img_te = _images(lab["test"], ids["test"][0], folder, o.image_size)
    cap_tr, y_tr = _captions(lab["train"], ids["train"][1])
    cap_te, y_te = _captions(lab["test"], ids["test"][1])
    val_i, tr_i = split_fractions(len(img_tr), [cfg.val_fraction, 1 - cfg.val_fraction], cfg.split_seed + 5)
    image = GroupData(
        "image", "image", Split(img_tr.x[tr_i], img_tr.y[tr_i]), Split(img_tr.x[val_i], img_tr.y[val_i]), img_te
    )
    val_t, tr_t = split_fractions(len(cap_tr), [cfg.val_fraction, 1 - cfg.val_fraction], cfg.split_seed + 6)
    train_caps = [cap_tr[i] for i in tr_t.tolist()]
    vocab = build_vocab(train_caps, o.tokens, o.max_vocab)  # from the training split only
    ids_all = encode(cap_tr, vocab, o.tokens, o.max_len)
    text = GroupData(
        "text",
        "text",
        Split(ids_all[tr_t], y_tr[tr_t]),
        Split(ids_all[val_t], y_tr[val_t]),
        Split(encode(cap_te, vocab, o.tokens, o.max_len), y_te),
        meta={"vocab_size": len(vocab), "vocab": vocab, "tokens": o.tokens, "classes": classes},
    )
    return ScenarioData([image, text], len(classes))
