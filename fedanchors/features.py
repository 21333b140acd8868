"""Frozen feature extractors in front of the classifier (the gap-analysis study's backbones), both modes.

``data.features`` replaces every group's inputs by the features of a frozen network, computed
once and cached on disk (``data.features.cache``, one file per data config, backbone,
weights file and source run; read back with ``weights_only=True``), so a federated run's
clients and a resumed run read them instead of recomputing:

* ``backbone: resnet18 | resnet50`` (torchvision) with ``layer: layer3 | layer4 | avgpool``
  (layer3 / layer4 are global-average-pooled over space);
* ``backbone: vit_b_16`` (torchvision) or ``dinov2_vits14 | dinov2_vitb14 | dinov2_vitl14 |
  dinov2_vitg14`` (the ``dinov2`` package, where installed) with ``block`` (index, -1 = the
  last) and ``pool: cls_token | mean_pool_patch | mean_pool_all``;
* ``backbone: from_run`` with ``from_run: runs/X``: the encoders an earlier fedanchors run
  trained (its best checkpoint; per input space, centralized or federated with one encoder
  per space), so the latent codes of that run are the features.

Weights come from ``weights: <file>`` (a state dict; nothing can be downloaded here), else
the backbone's random initialisation (seeded). Images with 1 or 2 channels are zero-padded
to 3; ``image_size`` > 0 resizes first (ViT-B/16 needs 224). The group's input space becomes
``<space>@<backbone>`` with shape (D,); an ``mlp`` encoder is the classifier on top.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fedanchors.errors import ConfigError

RESNETS = ("resnet18", "resnet50")
VITS = ("vit_b_16",)
DINOS = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14")


def _to_rgb(x: torch.Tensor, size: int) -> torch.Tensor:
    from fedanchors.data.base import resize2d

    if x.dim() != 4:
        raise ConfigError(f"data.features: backbones take images (N, C, H, W); got inputs of shape {tuple(x.shape)}")
    if x.shape[1] < 3:
        x = torch.cat([x, x.new_zeros(len(x), 3 - x.shape[1], *x.shape[2:])], 1)
    return resize2d(x, size, size) if size else x


class ResNetFeatures(nn.Module):
    def __init__(self, net: nn.Module, layer: str) -> None:
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer3(n.layer2(n.layer1(x)))
        if self.layer != "layer3":
            x = n.layer4(x)
        return x.mean((2, 3))


class ViTFeatures(nn.Module):
    """torchvision's VisionTransformer up to block ``block``, pooled."""

    def __init__(self, net: nn.Module, block: int, pool: str) -> None:
        super().__init__()
        self.net, self.pool = net, pool
        depth = len(net.encoder.layers)
        self.block = block % depth
        if not -depth <= block < depth:
            raise ConfigError(f"data.features.block must be in -{depth}..{depth - 1} for vit_b_16, got {block}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._process_input(x)
        x = torch.cat([n.class_token.expand(len(x), -1, -1), x], 1)
        x = n.encoder.dropout(x + n.encoder.pos_embedding)
        for i, layer in enumerate(n.encoder.layers):
            x = layer(x)
            if i == self.block:
                break
        if self.block == len(n.encoder.layers) - 1:
            x = n.encoder.ln(x)
        return pool_tokens(x, self.pool)


def pool_tokens(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, 1 + P, D) tokens -> (N, D): the class token, the mean of the patches, or of all."""
    if pool == "cls_token":
        return x[:, 0]
    if pool == "mean_pool_patch":
        return x[:, 1:].mean(1)
    return x.mean(1)


def _load_weights(net: nn.Module, path: str) -> None:
    from fedanchors.resume import mismatch

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"data.features.weights: {p} does not exist; give a saved state dict of the backbone")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except Exception as e:  # noqa: BLE001 - one line for the user
        raise mismatch(f"data.features.weights: {p}", "this backbone's state dict", e, fix="") from None


def build_backbone(f, seed: int) -> nn.Module:
    """The frozen extractor of ``data.features`` (eval mode)."""
    import torchvision.models as tvm

    torch.manual_seed(seed)
    if f.backbone in RESNETS:
        if f.layer not in ("layer3", "layer4", "avgpool"):
            raise ConfigError(f"data.features.layer: {f.layer!r} is not one of layer3, layer4, avgpool")
        net = getattr(tvm, f.backbone)(weights=None)
        if f.weights:
            _load_weights(net, f.weights)
        model: nn.Module = ResNetFeatures(net, f.layer)
    elif f.backbone in VITS:
        net = tvm.vit_b_16(weights=None)
        if f.weights:
            _load_weights(net, f.weights)
        model = ViTFeatures(net, f.block, f.pool)
    elif f.backbone in DINOS:
        try:
            import dinov2.hub.backbones as hub  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError(
                f"data.features.backbone: {f.backbone} needs the dinov2 package (not installed here); "
                "install it, or use resnet18 / resnet50 / vit_b_16"
            ) from None
        net = getattr(hub, f.backbone)(pretrained=False)
        if f.weights:
            _load_weights(net, f.weights)
        model = DinoFeatures(net, f.block, f.pool)
    else:
        choices = ", ".join((*RESNETS, *VITS, *DINOS, "from_run"))
        raise ConfigError(f"data.features.backbone: {f.backbone!r} is not one of {choices}")
    if f.pool not in ("cls_token", "mean_pool_patch", "mean_pool_all"):
        raise ConfigError(f"data.features.pool: {f.pool!r} is not one of cls_token, mean_pool_patch, mean_pool_all")
    return model.eval()


class DinoFeatures(nn.Module):
    def __init__(self, net: nn.Module, block: int, pool: str) -> None:
        super().__init__()
        self.net, self.block, self.pool = net, block, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (tokens,) = self.net.get_intermediate_layers(x, n=[self.block % len(self.net.blocks)], return_class_token=False,
                                                     norm=True)  # fmt: skip
        cls = self.net.forward_features(x)["x_norm_clstoken"] if self.pool != "mean_pool_patch" else None
        if self.pool == "cls_token":
            return cls
        if self.pool == "mean_pool_patch":
            return tokens.mean(1)
        return torch.cat([cls[:, None], tokens], 1).mean(1)


def _stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(cfg) -> str:
    """What the features depend on: the data config (but root and the cache folder), the
    backbone settings, and the weights file or source run checkpoint as found on disk."""
    from fedanchors.config import to_dict

    d = to_dict(cfg)
    d.pop("root", None)
    f = d["features"]
    f.pop("cache", None)
    f.pop("batch_size", None)
    extra = []
    if cfg.features.weights:
        w = Path(cfg.features.weights).expanduser()
        if not w.is_file():
            raise ConfigError(f"data.features.weights: {w} does not exist; give a saved state dict of the backbone")
        extra = _stamp(w)
    if cfg.features.from_run:
        extra = [_stamp(p) for p in sorted((Path(cfg.features.from_run) / "checkpoints").glob("best*.pt"))]
    return hashlib.sha256(json.dumps([d, extra], sort_keys=True, default=str).encode()).hexdigest()[:20]


@torch.no_grad()
def _apply(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]).float() for i in range(0, len(x), batch)]) if len(x) else x.new_zeros(0)


RunEncoders = Callable[[Path, object], dict[str, nn.Module]]  # (run dir, data) -> space -> encoder


def run_extractors(data, cfg, run_encoders: RunEncoders | None = None) -> dict[str, nn.Module]:
    """Input space -> its frozen extractor (one backbone for every space, or the encoders of an
    earlier run, which ``run_encoders`` restores: ``fedanchors.runs``, the layer above)."""
    f = cfg.features
    if f.backbone == "from_run":
        if run_encoders is None:
            raise ConfigError("data.features.backbone: from_run needs the run reader (use fedanchors.runs.build_data)")
        return run_encoders(Path(f.from_run), data)
    model = build_backbone(f, 0)
    return {s: nn.Sequential(_RGB(f.image_size), model) for s in data.spaces()}


class _RGB(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_rgb(x, self.size)


def with_features(data, cfg, run_encoders: RunEncoders | None = None):
    """``data`` with every split replaced by its cached (or computed, then cached) features."""
    from fedanchors.data.base import GroupData, ScenarioData, Split
    from fedanchors.resume import CheckpointError, load, save_atomic

    f = cfg.features
    path = Path(f.cache).expanduser() / f"{cache_key(cfg)}.pt"
    feats = None
    if path.is_file():
        try:
            feats = load(path, "cpu", ("groups",), "features cache")["groups"]
        except CheckpointError:
            feats = None  # a broken cache is recomputed
    if feats is None:
        extractors = run_extractors(data, cfg, run_encoders)
        feats = []
        for g in data.groups:
            m = extractors[g.space]
            parts = {s: _apply(m, getattr(g, s).x, f.batch_size) for s in ("train", "val", "test")}
            if g.gating is not None:
                parts["gating"] = _apply(m, g.gating.x, f.batch_size)
            feats.append(parts)
        save_atomic({"groups": feats}, path)
    run_tag = "run-" + re.sub(r"[^A-Za-z0-9_+-]", "-", Path(f.from_run).name)  # a valid space name (names.py)
    tag = f.backbone if f.backbone != "from_run" else run_tag
    groups = [
        GroupData(
            g.name, f"{g.space}@{tag}", *(Split(p[s], getattr(g, s).y) for s in ("train", "val", "test")), g.meta,
            None if g.gating is None else Split(p["gating"], g.gating.y),
        )
        for g, p in zip(data.groups, feats)
    ]  # fmt: skip
    return ScenarioData(groups, data.num_classes, data.class_sets)
