"""Image and vector encoders into the shared latent R^d, one per input space: the
``ENCODERS`` registry (text encoders register from ``fedanchors.encoders_text``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedanchors.config import EncoderConfig
from fedanchors.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")


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
