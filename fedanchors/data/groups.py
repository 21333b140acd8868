"""Build a scenario from ``data.groups`` (groups written in YAML) and check such a list.

The pipeline of one group:

1. **source**: the registered loader gives a pool and, where the source has one, its
   official test split (kept as the group's test split).
2. **share**: the groups of one source get disjoint parts of it, cut from one permutation
   seeded by ``data.split_seed`` in declaration order (``fraction``; a group without one
   gets an equal share of what the others leave; a source's only group with no fraction
   takes it all, in file order). Sources with units (FEMNIST writers, TextCaps images)
   are shared by unit. The official test split is shared the same way.
3. **selection**: ``where``-style attributes, ``classes``, ``speakers`` / ``writers``,
   then ``count`` (a seeded subset).
4. **split**: train / val / test as every scenario does (``data.test_fraction``,
   ``data.val_fraction``, ``data.max_per_group``, seed ``split_seed + 1 + group index``);
   with an official test split only validation is carved.
5. **transforms** per split: resize, dots, colour, greyscale; audio features are computed
   before the split and standardised with the training statistics; ``imbalance`` then
   thins the training split into a long tail.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from fedanchors.config import DataConfig, build_section
from fedanchors.data.base import GroupData, ScenarioData, Split, cap, check_finite_rows, data_root, split_fractions
from fedanchors.data.sources import SOURCES, Pool, Source, SourceData
from fedanchors.data.transforms import derive, image_transforms, longtail, space_name, spectrograms
from fedanchors.errors import ConfigError, DataError
from fedanchors.group_spec import GroupSpec
from fedanchors.names import check_name


def source_options(src: Source, spec: GroupSpec, key: str):
    """The group's ``options`` parsed into the source's options dataclass."""
    if src.options is None:
        if spec.options:
            raise ConfigError(f"{key}.options: source {src.name} takes no options, got {sorted(spec.options)}")
        return None
    return build_section(src.options, dict(spec.options), f"{key}.options")


def check_groups(groups: tuple[GroupSpec, ...], where: str = "data.groups") -> dict:
    """Validate a group list before any data is read; returns {group: (space, modality, shape)}."""
    if not groups:
        raise ConfigError(f"{where}: empty; declare at least one group")
    names: set[str] = set()
    shares: dict[str, list[float]] = defaultdict(list)
    out: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    coloured = [g.colour is not None for g in groups]
    for i, g in enumerate(groups):
        key = f"{where}[{i}]"
        if not g.name or not g.source:
            raise ConfigError(f"{key}: every group needs a name and a source, e.g. {{name: mnist28, source: mnist}}")
        check_name(g.name, f"{key}.name")
        if g.space:
            check_name(g.space, f"{key}.space", space=True)
        if g.name in names:
            raise ConfigError(f"{key}.name: group {g.name!r} is declared twice; group names must be unique")
        names.add(g.name)
        src = SOURCES.get(g.source, f"{key}.source")
        opts = source_options(src, g, key)
        _check_selection(g, src, src.classes(opts), key)
        if g.colour is not None and not all(coloured):
            raise ConfigError(f"{key}.colour relabels to 2 classes (y < C/2); give every group a colour or none")
        modality, shape = derive(g, src.modality(opts), src.shape(opts), key)
        space = g.space or space_name(modality, shape)
        for other, (s, m, sh) in out.items():
            if s == space and (m, sh) != (modality, shape):
                raise ConfigError(
                    f"{key}: group {g.name} ({modality} {list(shape)}) and group {other} ({m} {list(sh)}) share "
                    f"space {space!r}, but one encoder takes one shape; give them different spaces or shapes"
                )
        out[g.name] = (space, modality, shape)
        shares[g.source].append(g.fraction)
    for name, fr in shares.items():
        given = [f for f in fr if f != -1]
        if len(fr) > 1 and all(f == 1 for f in fr):  # each takes the whole source: selections apart
            _check_apart([g for g in groups if g.source == name], where)
            continue
        if sum(given) > 1 + 1e-9:
            raise ConfigError(f"{where}: the fractions of source {name} sum to {sum(given):g} > 1; lower them")
        if len(given) < len(fr) and sum(given) >= 1 - 1e-9:
            raise ConfigError(f"{where}: the fractions of source {name} leave nothing for its groups without one")
    return out


def _apart(a: GroupSpec, b: GroupSpec) -> bool:
    """Whether two groups' selections can share no example: disjoint classes, owners, or a
    ``where`` attribute given different values."""
    if a.classes and b.classes and not set(a.classes) & set(b.classes):
        return True
    for kind in ("writers", "speakers"):
        if getattr(a, kind) and getattr(b, kind) and not set(getattr(a, kind)) & set(getattr(b, kind)):
            return True
    return any(k in b.where and b.where[k] != v for k, v in a.where.items())


def _check_apart(members: list[GroupSpec], where: str) -> None:
    """Groups that each take a whole source (``fraction: 1``) must select disjoint examples."""
    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            if not _apart(a, b):
                raise ConfigError(
                    f"{where}: groups {a.name} and {b.name} both take all of source {a.source} (fraction: 1) but "
                    "their selections overlap; give them disjoint classes, writers or where: values, or fractions"
                )


def _check_selection(g: GroupSpec, src: Source, n_classes: int, key: str) -> None:
    """One group's selection and population entries against its source (labels, owners, attributes)."""
    if g.fraction != -1 and not 0 < g.fraction <= 1:
        raise ConfigError(f"{key}.fraction must be in (0, 1] (an empty group has no examples), got {g.fraction}")
    if g.count < 0 or g.clients < 0:
        raise ConfigError(f"{key}: count and clients must be >= 0")
    bad = [c for c in g.classes if not 0 <= c < n_classes]
    if bad:
        raise ConfigError(f"{key}.classes: {bad} outside source {g.source}'s labels 0..{n_classes - 1}")
    if g.imbalance < 1:
        raise ConfigError(f"{key}.imbalance must be >= 1 (1: balanced), got {g.imbalance}")
    for kind in ("speakers", "writers"):
        if getattr(g, kind) and src.owners != kind:
            has = f"has {src.owners}" if src.owners else "has neither speakers nor writers"
            raise ConfigError(f"{key}.{kind}: source {g.source} {has}")
    unknown = sorted(set(g.where) - set(src.attrs))
    if unknown:
        raise ConfigError(f"{key}.where: source {g.source} has no attribute {unknown} (it has: {list(src.attrs)})")
    if g.partition is not None:  # its kind is checked against the partitioners above data (config_checks)
        if not g.partition.alpha > 0 or g.partition.labels < 1:
            raise ConfigError(
                f"{key}.partition: alpha must be > 0 and labels >= 1, got {g.partition.alpha}, {g.partition.labels}"
            )
    if g.dots is not None and any(not 0 <= c < n_classes for c in g.dots.classes):
        raise ConfigError(f"{key}.dots.classes: {list(g.dots.classes)} outside labels 0..{n_classes - 1}")


def _shares(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Disjoint index sets of range(n), one per group of a source (see the module doc)."""
    if fractions == [-1] or all(f == 1 for f in fractions):  # one group, or each the whole source
        return [torch.arange(n) for _ in fractions]
    rest = 1 - sum(f for f in fractions if f != -1)
    missing = sum(f == -1 for f in fractions)
    return split_fractions(n, [f if f != -1 else rest / missing for f in fractions], seed)


def _by_unit(pool: Pool, units: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(torch.isin(pool.units, units)).squeeze(1)


def _select(pool: Pool, g: GroupSpec, key: str) -> Pool:
    keep = torch.ones(len(pool), dtype=torch.bool)
    for attr, value in g.where.items():
        keep &= pool.attrs[attr] == value
    if g.classes:
        keep &= torch.isin(pool.y, torch.tensor(g.classes))
    wanted = set(g.speakers or g.writers)
    if wanted:
        missing = sorted(wanted - set(pool.owners or []))
        if missing and key:
            raise DataError(f"{key}: {missing[:5]} are not among the source's {g.source} owners in this share")
        keep &= torch.tensor([o in wanted for o in (pool.owners or [])], dtype=torch.bool)
    return pool.take(torch.nonzero(keep).squeeze(1))


def _allocate(groups: tuple[GroupSpec, ...], loaded: dict, seed: int) -> list[tuple[Pool, Pool | None, Pool | None]]:
    """Each group's (pool, official test pool, official validation pool; None where the source
    has none) after sharing and selection."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_source[g.source].append(i)
    out: list = [None] * len(groups)
    for name, members in by_source.items():
        fractions = [groups[i].fraction for i in members]
        first = loaded[members[0]]
        if SOURCES.get(name).units:
            n_units = int(first.train.units.max()) + 1 if len(first.train) else 0
            for i, p in zip(members, _shares(n_units, fractions, seed)):
                s = loaded[i]
                out[i] = tuple(None if q is None else q.take(_by_unit(q, p)) for q in (s.train, s.test, s.val))
            continue
        parts = _shares(len(first.train), fractions, seed)
        extra = [
            _shares(len(q), fractions, seed + off) if q is not None else [None] * len(members)
            for q, off in ((first.test, 100), (first.val, 200))
        ]
        for k, (i, p) in enumerate(zip(members, parts)):
            s = loaded[i]
            tp, vp = extra[0][k], extra[1][k]
            out[i] = (
                s.train.take(p),
                s.test.take(tp) if tp is not None else None,
                s.val.take(vp) if vp is not None else None,
            )
    return [
        (
            _select(tr, groups[i], f"data.groups[{i}]"),
            *(None if q is None else _select(q, groups[i], "") for q in (te, va)),
        )
        for i, (tr, te, va) in enumerate(out)
    ]


def _count(pool: Pool, g: GroupSpec, seed: int, key: str) -> Pool:
    if not g.count:
        return pool
    if g.count > len(pool):
        raise ConfigError(f"{key}.count={g.count} exceeds the {len(pool)} examples its share and selection leave")
    keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 4211))[: g.count].sort().values
    return pool.take(keep)


def _features(g: GroupSpec, pool: Pool, test: Pool | None, val: Pool | None):
    """Audio front end before the split; with an official test split, standardised here.
    Returns (pool, test, val, late): ``late`` () when standardising waits for the split."""
    if g.features is None:
        return pool, test, val, None

    def spec(p: Pool | None) -> Pool | None:
        return None if p is None else Pool(spectrograms(p.x, g.features), p.y, p.owners, p.units, p.attrs)

    pool, test, val = spec(pool), spec(test), spec(val)
    if not g.features.standardize:
        return pool, test, val, None
    if test is None:
        return pool, test, val, ()  # standardised after the split, with the training split's statistics
    mean, std = pool.x.mean(), pool.x.std()

    def norm(p: Pool | None) -> Pool | None:
        return None if p is None else Pool((p.x - mean) / std, p.y, p.owners, p.units, p.attrs)

    return norm(pool), norm(test), norm(val), None


def _cut(pool: Pool, test: Pool | None, val: Pool | None, cfg: DataConfig, seed: int) -> dict[str, Pool]:
    """train / val / test: the source's official splits where it has them, else cut from the pool."""
    if cfg.max_per_group and cfg.max_per_group < len(pool):
        keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 7919))
        pool = pool.take(keep[: cfg.max_per_group].sort().values)
    if test is not None and val is not None:
        return {"train": pool, "val": val, "test": test}
    if test is not None:
        val, train = split_fractions(len(pool), [cfg.val_fraction, 1 - cfg.val_fraction], seed)
        return {"train": pool.take(train), "val": pool.take(val), "test": test}
    te, va = cfg.test_fraction, cfg.val_fraction
    t, v, tr = split_fractions(len(pool), [te, va, 1 - te - va], seed)
    return {"train": pool.take(tr), "val": pool.take(v), "test": pool.take(t)}


def _owners_meta(parts: dict[str, Pool], kind: str) -> dict:
    """Each split's owner index (the group's writers/speakers, sorted) for ``partition: natural``."""
    if not kind or parts["train"].owners is None:
        return {}
    names = sorted(set(parts["train"].owners))
    index = {n: k for k, n in enumerate(names)}
    orphans = {o for s in ("val", "test") for o in (parts[s].owners or []) if o not in index}
    if orphans:
        names += sorted(orphans)
        index = {n: k for k, n in enumerate(names)}
    owners = {s: torch.tensor([index[o] for o in p.owners or []], dtype=torch.int64) for s, p in parts.items()}
    return {"owners": owners, kind: names}


def build_groups(cfg: DataConfig, groups: tuple[GroupSpec, ...], name: str = "data.groups") -> ScenarioData:
    """The scenario ``groups`` declare (checked again here: presets build through this too)."""
    layout = check_groups(groups, name)
    cache: dict[tuple, SourceData] = {}
    loaded = []
    for i, g in enumerate(groups):
        src = SOURCES.get(g.source)
        opts = source_options(src, g, f"{name}[{i}]")
        k = (g.source, repr(opts))
        if k not in cache:
            cache[k] = src.load(cfg, opts)
            for split, pool in (("train", cache[k].train), ("test", cache[k].test), ("val", cache[k].val)):
                if pool is not None:  # the source's own check names the file; this one every source
                    check_finite_rows(pool.x, f"source {g.source} ({split} pool, under {data_root(cfg)})", pool.owners)
        loaded.append(cache[k])
    shares = _allocate(groups, loaded, cfg.split_seed)
    n_classes = [SOURCES.get(g.source).classes(source_options(SOURCES.get(g.source), g, "")) for g in groups]
    num_classes = 2 if groups[0].colour is not None else max(n_classes)
    out = []
    for i, (g, (pool, test, val)) in enumerate(zip(groups, shares)):
        key, seed, n_src = f"{name}[{i}]", cfg.split_seed + 1 + i, n_classes[i]
        src = SOURCES.get(g.source)
        pool = _count(pool, g, seed, key)
        pool, test, val, late = _features(g, pool, test, val)
        parts = _cut(pool, test, val, cfg, seed)
        splits = {}
        for j, (s, p) in enumerate(parts.items()):
            x, y = p.x, p.y
            if layout[g.name][1] == "image":
                x, y = image_transforms(g, x, y, s, n_src, cfg.split_seed + 11 + 3 * i + j)
            splits[s] = Split(x, y)
        if late is not None:
            tr = torch.cat([splits["train"].x, splits["val"].x])
            mean, std = tr.mean(), tr.std()
            splits = {s: Split((sp.x - mean) / std, sp.y) for s, sp in splits.items()}
        if g.imbalance > 1:
            keep = longtail(splits["train"].y, g.imbalance)
            splits["train"] = Split(splits["train"].x[keep], splits["train"].y[keep])
            parts["train"] = parts["train"].take(keep)
        if len(splits["train"]) == 0:
            raise ConfigError(f"{key}: group {g.name} has no training examples after its share and selection")
        meta = {**_owners_meta(parts, src.owners), **loaded[i].meta}
        if src.units:  # which unit (writer, image) each example belongs to, per split
            meta["units"] = {s: p.units for s, p in parts.items() if p.units is not None}
        if g.majority is not None:
            meta["majority"] = g.majority
        if g.clients or g.partition is not None:
            meta["population"] = {"clients": g.clients, "partition": g.partition}
        out.append(GroupData(g.name, layout[g.name][0], splits["train"], splits["val"], splits["test"], meta))
    return ScenarioData(out, num_classes)


def parse_groups(raw: list[dict], where: str) -> tuple[GroupSpec, ...]:
    """Plain dicts (a preset's expansion) -> GroupSpecs, checked like YAML."""
    return tuple(build_section(GroupSpec, dict(d), f"{where}[{i}]") for i, d in enumerate(raw))


__all__ = ["build_groups", "check_groups", "parse_groups", "cap"]
