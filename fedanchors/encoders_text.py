"""Text encoders over token ids (N, L), id 0 = padding: bag of words, char-CNN, transformer."""

from __future__ import annotations

import torch
from torch import nn

from fedanchors.config import EncoderConfig
from fedanchors.encoders import ENCODERS


def _vocab(meta: dict | None) -> int:
    if not meta or "vocab_size" not in meta:
        raise ValueError("a text encoder needs the group's vocab_size (text scenarios provide it)")
    return int(meta["vocab_size"])


def _masked_mean(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    mask = (ids != 0).unsqueeze(-1).to(h.dtype)
    return (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class BagOfWords(nn.Module):
    """Mean of token embeddings, then an MLP."""

    def __init__(self, vocab: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden, padding_idx=0)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(_masked_mean(self.emb(ids), ids))


class CharCNN(nn.Module):
    """Embeddings, Conv1d-ReLU blocks (``channels``), global max pool, linear."""

    def __init__(self, vocab: int, latent_dim: int, channels: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32, padding_idx=0)
        layers, c_in = [], 32
        for c in channels:
            layers += [nn.Conv1d(c_in, c, 5, padding=2), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Linear(hidden, latent_dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.convs(self.emb(ids).transpose(1, 2))  # (N, C, L)
        return self.out(h.amax(-1))


class SmallTransformer(nn.Module):
    """Token + learned position embeddings, 2 pre-norm encoder layers, masked mean pool."""

    def __init__(self, vocab: int, max_len: int, latent_dim: int, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, latent_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        h = self.encoder(self.emb(ids) + self.pos[:, : ids.shape[1]], src_key_padding_mask=pad)
        return self.out(_masked_mean(h, ids))


@ENCODERS.register("bow_mlp")
def bow_mlp(shape: tuple[int, ...], latent_dim: int, cfg: EncoderConfig, meta: dict | None = None) -> nn.Module:
    return BagOfWords(_vocab(meta), latent_dim, cfg.hidden)


@ENCODERS.register("char_cnn")
def char_cnn(shape: tuple[int, ...], latent_dim: int, cfg: EncoderConfig, meta: dict | None = None) -> nn.Module:
    return CharCNN(_vocab(meta), latent_dim, cfg.channels, cfg.hidden)


@ENCODERS.register("transformer")
def transformer(shape: tuple[int, ...], latent_dim: int, cfg: EncoderConfig, meta: dict | None = None) -> nn.Module:
    return SmallTransformer(_vocab(meta), shape[0], latent_dim)
