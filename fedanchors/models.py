"""Encoders (one per input space) into the shared latent R^d, and the shared head."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from fedanchors.anchors import AnchorModule
from fedanchors.config import EncoderConfig, ModelConfig
from fedanchors.parametrization import reparametrize
from fedanchors.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")
HEADS: Registry[Callable[..., nn.Module]] = Registry("head")


@ENCODERS.register("cnn")
def cnn(shape: tuple[int, ...], latent_dim: int, cfg: EncoderConfig, meta: dict | None = None) -> nn.Module:
    """Conv3x3-ReLU-MaxPool blocks (``channels``), then an MLP to the latent space."""
    layers: list[nn.Module] = []
    c_in, side = shape[0], min(shape[1:])
    for c_out in cfg.channels:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
        if side >= 4:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        c_in = c_out
    body = nn.Sequential(*layers, nn.Flatten())
    with torch.no_grad():
        flat = body(torch.zeros(1, *shape)).shape[1]
    return nn.Sequential(body, nn.Linear(flat, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, latent_dim))


@ENCODERS.register("mlp")
def mlp(shape: tuple[int, ...], latent_dim: int, cfg: EncoderConfig, meta: dict | None = None) -> nn.Module:
    """``layers`` hidden layers of width ``hidden`` (ReLU) on the flattened input, then the latent layer."""
    n = int(torch.tensor(shape).prod())
    mods: list[nn.Module] = [nn.Flatten()]
    for i in range(cfg.layers):
        mods += [nn.Linear(n if i == 0 else cfg.hidden, cfg.hidden), nn.ReLU()]
    mods.append(nn.Linear(cfg.hidden if cfg.layers else n, latent_dim))
    return nn.Sequential(*mods)


@ENCODERS.register("resnet18")
def resnet18(shape: tuple[int, ...], latent_dim: int, cfg: EncoderConfig, meta: dict | None = None) -> nn.Module:
    """torchvision ResNet-18, no pretrained weights, first conv sized to the input channels."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=latent_dim)
    if shape[0] != 3:
        net.conv1 = nn.Conv2d(shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


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
    """Build a module under a forked RNG so its init depends on ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


from fedanchors import encoders_text  # noqa: E402, F401  (registers the text encoders)
