"""Captions -> token ids with a vocabulary built from the training split only."""

from __future__ import annotations

import re
from collections import Counter

import torch

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9']+")


def tokenize(text: str, level: str) -> list[str]:
    """``word``: lower-cased alphanumeric words; ``char``: lower-cased characters."""
    text = text.lower()
    return _WORD.findall(text) if level == "word" else list(text)


def build_vocab(texts: list[str], level: str, max_size: int = 5000) -> list[str]:
    """PAD (id 0), UNK (id 1), then tokens by descending frequency (ties alphabetical)."""
    counts = Counter(t for s in texts for t in tokenize(s, level))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, max_size - 2)]
    return [PAD, UNK] + [t for t, _ in ranked]


def encode(texts: list[str], vocab: list[str], level: str, max_len: int) -> torch.Tensor:
    """(N, max_len) int64 token ids, UNK for unseen tokens, right-padded with PAD."""
    index = {t: i for i, t in enumerate(vocab)}
    out = torch.zeros(len(texts), max_len, dtype=torch.int64)
    for r, s in enumerate(texts):
        ids = [index.get(t, 1) for t in tokenize(s, level)][:max_len]
        out[r, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out
