"""A run's data: groups built from ``data.groups`` (written in YAML, ``fedanchors.data.groups``)
or from a named group list, ``data.scenario`` (a YAML file in ``fedanchors/data/presets/``,
the same list a user could write). Importing this fills ``SOURCES``.
"""

import difflib
from pathlib import Path

from fedanchors.config import read_yaml
from fedanchors.data.base import GroupData, ScenarioData, Split, check_finite_rows, check_labels, data_root
from fedanchors.data.groups import build_groups, check_groups, parse_groups, source_options
from fedanchors.data.sources import SOURCES
from fedanchors.errors import ConfigError
from fedanchors.group_spec import GroupSpec
from fedanchors.names import check_name

__all__ = [
    "PRESETS_DIR",
    "SOURCES",
    "GroupData",
    "ScenarioData",
    "Split",
    "build_scenario",
    "check_data_config",
    "data_root",
    "presets",
    "resolve_groups",
]

DEFAULT_SCENARIO = "digits"
PRESETS_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """The named group lists shipped in ``fedanchors/data/presets/``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def scenario_name(cfg) -> str:
    return cfg.scenario or DEFAULT_SCENARIO


def preset(name: str) -> dict:
    """The ``groups`` (and ``class_sets``) of the named group list; an unknown name is one line."""
    if name not in presets():
        close = difflib.get_close_matches(name, presets(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"data.scenario: no group list named {name!r}{hint}; shipped: {', '.join(presets())}, or write data.groups"
        )
    raw = read_yaml(PRESETS_DIR / f"{name}.yaml") or {}
    unknown = sorted(set(raw) - {"groups", "class_sets"})
    if unknown:
        raise ConfigError(f"{PRESETS_DIR / name}.yaml: unknown key(s) {unknown}; a group list holds groups, class_sets")
    return raw


def resolve_groups(cfg) -> tuple[GroupSpec, ...]:
    """The group list the data config declares: ``data.groups``, else the named list's."""
    if cfg.groups:
        return cfg.groups
    name = scenario_name(cfg)
    return parse_groups(preset(name).get("groups") or [], f"data.scenario {name}")


def class_sets(cfg) -> dict[str, tuple[int, ...]]:
    """``data.class_sets``, else the named group list's."""
    if cfg.groups or cfg.class_sets:
        return dict(cfg.class_sets)
    raw = preset(scenario_name(cfg)).get("class_sets") or {}
    return {k: tuple(v) for k, v in raw.items()}


def check_data_config(cfg) -> None:
    """Everything about ``data`` that can be checked without reading a file (at config load)."""
    if cfg.groups and cfg.scenario:
        raise ConfigError(
            f"data.scenario: {cfg.scenario!r} and data.groups are both set; keep one (a scenario is a "
            "named group list: --print-config shows it)"
        )
    where = "data.groups" if cfg.groups else f"data.scenario {scenario_name(cfg)}"
    groups = resolve_groups(cfg)
    check_groups(groups, where)
    n_classes = max(SOURCES.get(g.source).classes(source_options(SOURCES.get(g.source), g, "")) for g in groups)
    for name, classes in class_sets(cfg).items():
        check_name(name, f"data.class_sets.{name}")
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad or not classes:
            raise ConfigError(f"data.class_sets.{name}: {list(classes)} must be non-empty labels in 0..{n_classes - 1}")


def build_scenario(cfg) -> ScenarioData:
    """Build the configured groups (``cfg`` is the run's DataConfig). Frozen features
    (``data.features``) are applied above, by ``fedanchors.runs.build_data``."""
    name = "data.groups" if cfg.groups else f"data.scenario {scenario_name(cfg)}"
    groups = resolve_groups(cfg)
    data = build_groups(cfg, groups, name)
    data.class_sets = {k: list(v) for k, v in class_sets(cfg).items()}
    for g in data.groups:
        for split in ("train", "val", "test"):
            where = f"{name}, group {g.name} ({split})"
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
