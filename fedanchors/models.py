"""Model assembly: the encoder of an input space (from ``fedanchors.encoders``' registry, text
encoders in ``fedanchors.encoders_text``), the shared head, the anchors, seeded alike in both modes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from fedanchors import encoders_text  # noqa: F401  (registers the text encoders)
from fedanchors.anchors import AnchorModule
from fedanchors.config import ModelConfig
from fedanchors.encoders import ENCODERS
from fedanchors.parametrization import reparametrize
from fedanchors.registry import Registry

HEADS: Registry[Callable[..., nn.Module]] = Registry("head")


@HEADS.register("linear")
def linear_head(latent_dim: int, num_classes: int, hidden: int) -> nn.Module:
    """psi(z) = W z + b."""
    return nn.Linear(latent_dim, num_classes)


@HEADS.register("mlp")
def mlp_head(latent_dim: int, num_classes: int, hidden: int) -> nn.Module:
    """d -> hidden -> C with a ReLU."""
    return nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def stable_seed(*parts: object) -> int:
    """A seed from any parts, identical across processes (unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module under a forked RNG so its init depends on ``seed`` alone. Only the CPU
    generator is seeded (modules are initialised on CPU): ``torch.manual_seed`` would also
    queue a lazy CUDA seeding with its call stack each time (about 6 ms, and kept), which
    dominated building 10,000 clients' models."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return build()


def build_encoder(
    cfg: ModelConfig, space: str, shape: tuple[int, ...], seed: int, meta: dict | None = None
) -> nn.Module:
    """The encoder of input space ``space``; same (seed, space) -> same weights in both modes.

    ``meta`` carries what the data decides (e.g. a text group's ``vocab_size``).
    """
    enc = cfg.encoders.get(space, cfg.encoder)
    builder = ENCODERS.get(enc.kind, f"model.encoders.{space}.kind")
    module = _seeded(stable_seed(seed, "encoder", space), lambda: builder(tuple(shape), cfg.latent_dim, enc, meta))
    return module if cfg.init == "default" else reparametrize(module, cfg.init, "encoder", stable_seed(seed, space))


def build_head(cfg: ModelConfig, num_classes: int, seed: int) -> nn.Module:
    """The shared classification head."""
    builder = HEADS.get(cfg.head, "model.head")
    module = _seeded(stable_seed(seed, "head"), lambda: builder(cfg.latent_dim, num_classes, cfg.head_hidden))
    return module if cfg.init == "default" else reparametrize(module, cfg.init, "head", stable_seed(seed, "head"))


def build_anchors(
    latent_dim: int, num_classes: int, eps: float, init_scale: float, seed: int, structure: str = "full"
) -> AnchorModule:
    """The shared class anchors (``structure``: anchors.covariance)."""
    return _seeded(
        stable_seed(seed, "anchors"), lambda: AnchorModule(num_classes, latent_dim, eps, init_scale, structure)
    )
