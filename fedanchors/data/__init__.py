"""Scenarios: real datasets split into groups. Importing this fills ``SCENARIOS``, ``PRESETS``
and ``SOURCES``.

A run's groups come from ``data.groups`` (written in YAML, ``fedanchors.data.groups``), or
from ``data.scenario``: a preset (a named group list) or a Python scenario.
"""

import difflib

from fedanchors.config import build_section
from fedanchors.data import digits, femnist, longtail, mnist, multimodal, spurious, textcaps, waterbirds  # noqa: F401
from fedanchors.data.base import (
    SCENARIO_OPTIONS,
    SCENARIOS,
    GroupData,
    ScenarioData,
    Split,
    check_finite_rows,
    check_labels,
    data_root,
)
from fedanchors.data.groups import build_groups, check_groups, parse_groups
from fedanchors.data.presets import PRESETS
from fedanchors.data.sources import SOURCES
from fedanchors.errors import ConfigError
from fedanchors.group_spec import GroupSpec

__all__ = [
    "PRESETS",
    "SCENARIOS",
    "SOURCES",
    "GroupData",
    "ScenarioData",
    "Split",
    "build_scenario",
    "check_data_config",
    "data_root",
    "resolve_groups",
]

DEFAULT_SCENARIO = "digits"


def scenario_name(cfg) -> str:
    return cfg.scenario or DEFAULT_SCENARIO


def resolve_groups(cfg) -> tuple[GroupSpec, ...] | None:
    """The group list the data config declares (a preset expanded), or None for a Python scenario."""
    if cfg.groups:
        return cfg.groups
    name = scenario_name(cfg)
    if name in PRESETS:
        p = PRESETS.get(name)
        return parse_groups(
            p.expand(build_section(p.options, dict(cfg.options), "data.options")), f"data.scenario {name}"
        )
    return None


def check_data_config(cfg) -> None:
    """Everything about ``data`` that can be checked without reading a file (at config load)."""
    if cfg.groups:
        if cfg.scenario:
            raise ConfigError(
                f"data.scenario: {cfg.scenario!r} and data.groups are both set; keep one (a scenario is a "
                "named group list: --print-config shows it)"
            )
        if cfg.options:
            raise ConfigError(
                f"data.options {sorted(cfg.options)} is for a named scenario; a group takes its source's options "
                "in its own 'options:' entry"
            )
        check_groups(cfg.groups)
        return
    name = scenario_name(cfg)
    if name not in PRESETS and name not in SCENARIOS:
        valid = sorted(PRESETS.names() + SCENARIOS.names())
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"data.scenario: unknown scenario {name!r}{hint}; valid: {', '.join(valid)}, or data.groups")
    if name in PRESETS:
        check_groups(resolve_groups(cfg), f"data.scenario {name}")
    else:
        build_section(SCENARIO_OPTIONS[name], dict(cfg.options), "data.options")


def build_scenario(cfg) -> ScenarioData:
    """Build the configured groups (``cfg`` is the run's DataConfig). Frozen features
    (``data.features``) are applied above, by ``fedanchors.runs.build_data``."""
    groups = resolve_groups(cfg)
    name = scenario_name(cfg)
    if groups is not None:
        data = build_groups(cfg, groups, "data.groups" if cfg.groups else f"data.scenario {name}")
    else:
        data = SCENARIOS.get(name, "data.scenario")(cfg)
    for g in data.groups:
        for split in ("train", "val", "test"):
            where = f"scenario {name}, group {g.name} ({split})"
            check_labels(getattr(g, split).y, data.num_classes, where)
            check_finite_rows(getattr(g, split).x, where)
    if cfg.gating_fraction > 0:
        data = carve_gating(data, cfg.gating_fraction, cfg.split_seed)
    return data if cfg.common_input == "none" else to_common_input(data, cfg.common_input)


def carve_gating(data: ScenarioData, fraction: float, seed: int) -> ScenarioData:
    """Hold out ``fraction`` of every class of each group's training split (round(fraction * n_c)
    examples, seeded) as the group's ``gating`` split; ``train`` keeps the rest, in order. The
    gating split so follows the training distribution (long tail included)."""
    import torch

    out = []
    for gi, g in enumerate(data.groups):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + gi)
        take = torch.zeros(len(g.train), dtype=torch.bool)
        for c in torch.unique(g.train.y).tolist():
            idx = torch.nonzero(g.train.y == c).flatten()
            k = round(fraction * len(idx))
            take[idx[torch.randperm(len(idx), generator=gen)[:k]]] = True
        train, gating = Split(g.train.x[~take], g.train.y[~take]), Split(g.train.x[take], g.train.y[take])
        out.append(GroupData(g.name, g.space, train, g.val, g.test, g.meta, gating))
    return ScenarioData(out, data.num_classes, data.class_sets)


def to_common_input(data: ScenarioData, how: str = "resize") -> ScenarioData:
    """``data.common_input``: every group at the largest channel count and pixel size among
    them, all in the one input space ``common``: channels zero-padded; pixels by bilinear
    resize (``resize``) or by zero padding at the bottom and right (``pad``, as the pixel-size study's
    ``pad_to_max_collate``: the original pixels untouched, at the top left)."""
    import torch
    import torch.nn.functional as F

    from fedanchors.data.base import resize2d

    shapes = [g.shape for g in data.groups]
    if any(len(s) != 3 for s in shapes):
        bad = next(g.name for g in data.groups if len(g.shape) != 3)
        raise ConfigError(
            f"data.common_input: group {bad} is not an image-like (C, H, W) input (e.g. text); "
            "one common input needs every group to be one"
        )
    c, h, w = (max(s[i] for s in shapes) for i in range(3))

    def fit(x: torch.Tensor) -> torch.Tensor:
        x = resize2d(x, h, w) if how == "resize" else F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))
        return torch.cat([x, x.new_zeros(len(x), c - x.shape[1], h, w)], 1) if x.shape[1] < c else x

    groups = [
        GroupData(
            g.name, "common", *(Split(fit(s.x), s.y) for s in (g.train, g.val, g.test)), g.meta,
            None if g.gating is None else Split(fit(g.gating.x), g.gating.y),
        )
        for g in data.groups
    ]  # fmt: skip
    return ScenarioData(groups, data.num_classes, data.class_sets)
