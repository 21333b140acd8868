"""TextCaps (Sidorov et al. 2020): one view per group, the picture or its captions, top-K classes.

Images are the units: groups of TextCaps get disjoint image ids, so an ``image`` group and a
``text`` group never see the same picture. The vocabulary is built from the captions of the
training annotations (the official val annotations are the test split).
"""

from dataclasses import dataclass

import torch

from fedanchors.data.base import data_root
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.data.text import build_vocab, encode
from fedanchors.data.textcaps import FILES, label_entries, load_image, read_annotations, top_classes
from fedanchors.errors import DataError


@dataclass(frozen=True)
class TextCapsOptions:
    view: str = "image"  # image | text
    top_k: int = 10
    image_size: int = 64
    tokens: str = "word"  # word | char
    max_len: int = 32
    max_vocab: int = 5000


def _shape(o: TextCapsOptions) -> tuple[int, ...]:
    return (3, o.image_size, o.image_size) if o.view == "image" else (o.max_len,)


@source(
    "textcaps",
    classes=lambda o: o.top_k,
    modality=lambda o: "text" if o.view == "text" else "image",
    shape=_shape,
    options=TextCapsOptions,
    official_test=True,
    units=True,
)
def textcaps(cfg, o: TextCapsOptions) -> SourceData:
    """TextCaps images (RGB) or captions (token ids); official val annotations as test."""
    if o.view not in ("image", "text") or o.tokens not in ("word", "char"):
        raise DataError(f"textcaps options: view must be image|text and tokens word|char, got {o.view}, {o.tokens}")
    root = data_root(cfg) / "textcaps"
    train_all = read_annotations(root / FILES["train"])
    classes = top_classes(train_all, o.top_k)
    lab = {s: label_entries(train_all if s == "train" else read_annotations(root / FILES[s]), classes) for s in FILES}
    vocab = build_vocab([d.get("caption_str", "") for d, _ in lab["train"]], o.tokens, o.max_vocab)
    pools = {}
    for split, entries in lab.items():
        ids = sorted({d["image_id"] for d, _ in entries})
        unit_of = {i: u for u, i in enumerate(ids)}
        if o.view == "image":
            first = {}
            for d, y in entries:
                first.setdefault(d["image_id"], y)
            x = [load_image(root / "train_images" / f"{i}.jpg", o.image_size) for i in ids]
            y = [first[i] for i in ids]
            units = list(range(len(ids)))
            xt = torch.stack(x) if x else torch.zeros(0, 3, o.image_size, o.image_size)
        else:
            xt = encode([d.get("caption_str", "") for d, _ in entries], vocab, o.tokens, o.max_len)
            y = [label for _, label in entries]
            units = [unit_of[d["image_id"]] for d, _ in entries]
        pools[split] = Pool(xt, torch.tensor(y, dtype=torch.int64), units=torch.tensor(units, dtype=torch.int64))
    meta = {"vocab_size": len(vocab), "vocab": vocab, "tokens": o.tokens} if o.view == "text" else {}
    return SourceData(pools["train"], pools["test"], meta={**meta, "classes": classes})
