"""Model assembly: the encoder of an input space (from ``fedanchors.encoders``' registry, text
encoders in ``fedanchors.encoders_text``), the shared head, the anchors, seeded alike in both modes."""

from __future__ import annotations

import copy
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


class FreshModels:
    """A node's freshly initialised (encoder, head, anchors), built once per key and handed out
    as deep copies. Every module's init depends on its seed alone (``_seeded`` forks the RNG),
    so a copy equals a new build, bit for bit, and leaves the global RNG as a build would;
    building the CNN's weights costs ~30x copying them, and a client builds one each visit.
    The objects the key names (configs, ``meta``) are held, so their ids stay theirs."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._built: dict[tuple, tuple[tuple, tuple[nn.Module, nn.Module, AnchorModule]]] = {}

    def get(self, model, anchors, seed: int, space: str, shape, meta, num_classes: int):
        """Copies of ``build_encoder``/``build_head``/``build_anchors`` for these arguments
        (``model``: ModelConfig, ``anchors``: AnchorConfig)."""
        held = (model, anchors, meta)
        key = (*map(id, held), seed, space, tuple(shape), num_classes)
        if key not in self._built or any(a is not b for a, b in zip(self._built[key][0], held)):
            if len(self._built) >= self.capacity:
                self._built.clear()
            parts = (
                build_encoder(model, space, tuple(shape), seed, meta),
                build_head(model, num_classes, seed),
                build_anchors(model.latent_dim, num_classes, anchors.eps, anchors.init_scale, seed, anchors.covariance),
            )
            self._built[key] = (held, parts)
        return tuple(copy.deepcopy(m) for m in self._built[key][1])
