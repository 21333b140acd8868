"""Experts are fedanchors runs: their logits on the gating, validation and test splits are
exported once per run (``<run>/gating_logits.pt``, rebuilt when the best checkpoint changes)
and stacked into ``[N, E, C]`` with the labels. Read with ``weights_only=True``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fedanchors.config import Config, to_dict
from fedanchors.configure import load_config
from fedanchors.errors import ConfigError
from fedanchors.resume import CheckpointError, load
from fedanchors.runs import FILES, build_data, group_models  # noqa: F401 (group_models: importable here too)

SPLITS = ("gating", "val", "test")
CACHE = "gating_logits.pt"


@dataclass
class GateSplit:
    """One split: logits (N, E, C), labels (N,), the expert run's group of each example (N,)."""

    logits: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def expert_config(run: Path) -> Config:
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"expert run {run} has no config.yaml; train it first (or give the expert a config)")
    cfg = load_config(run / "config.yaml")
    if cfg.data.gating_fraction <= 0:
        raise ConfigError(
            f"expert run {run} trained on every training example (data.gating_fraction: 0); train it with "
            "data.gating_fraction: 0.1 so the gate has a split the experts never saw"
        )
    return cfg


def data_key(cfg: Config) -> dict:
    """What must match across experts: the data config but its root."""
    d = to_dict(cfg.data)
    d.pop("root", None)
    return d


@torch.no_grad()
def logits_of(encoder, head, x: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    encoder.eval()
    head.eval()
    return torch.cat([head(encoder(x[i : i + batch].to(device))).float().cpu() for i in range(0, len(x), batch)])


def _stamp(run: Path, cfg: Config) -> list:
    st = (run / "checkpoints" / FILES[cfg.mode].format("best")).stat()
    return [st.st_size, st.st_mtime_ns]


def export_logits(run: Path, device: torch.device) -> dict:
    """{"splits": {split: {logits (N, C), y (N,), group (N,)}}, "class_sets", "groups"} over
    every group, cached in the run."""

    cfg = expert_config(run)
    stamp = _stamp(run, cfg)
    cache = run / CACHE
    if cache.is_file():
        try:
            got = load(cache, "cpu", ("stamp", "splits"), "gating logits cache")
            if got["stamp"] == stamp:
                return got
        except CheckpointError:
            pass  # a broken cache is rebuilt
    data = build_data(cfg.data)
    encoders, heads = group_models(run, cfg, data, device)
    out = {}
    for split in SPLITS:
        parts = [getattr(g, split) for g in data.groups]
        out[split] = {
            "logits": torch.cat([logits_of(e, h, s.x, device) for e, h, s in zip(encoders, heads, parts)]),
            "y": torch.cat([s.y for s in parts]),
            "group": torch.cat([torch.full((len(s),), gi, dtype=torch.int64) for gi, s in enumerate(parts)]),
        }
    tmp = cache.with_suffix(".tmp")
    got = {"stamp": stamp, "splits": out, "class_sets": dict(data.class_sets), "groups": data.names}
    torch.save(got, tmp)
    os.replace(tmp, cache)
    return got


def stack_experts(runs: list[Path], device: torch.device) -> tuple[dict[str, GateSplit], dict]:
    """Every expert's export stacked to [N, E, C]; the experts must share their data (same
    scenario, splits and gating fraction: the same labels in the same order)."""
    keys = [data_key(expert_config(r)) for r in runs]
    for r, k in zip(runs[1:], keys[1:]):
        if k != keys[0]:
            diff = sorted(x for x in set(k) | set(keys[0]) if k.get(x) != keys[0].get(x))
            raise ConfigError(f"expert run {r} differs from {runs[0]} in data.{diff[0]}; experts must share their data")
    got = [export_logits(r, device) for r in runs]
    exports = [g["splits"] for g in got]
    out = {}
    for split in SPLITS:
        y = exports[0][split]["y"]
        if any(not torch.equal(e[split]["y"], y) for e in exports[1:]):
            raise ConfigError(f"the experts' {split} labels differ; rebuild them from the same data")
        logits = torch.stack([e[split]["logits"] for e in exports], 1)
        out[split] = GateSplit(logits, y, exports[0][split]["group"])
    return out, {"class_sets": got[0]["class_sets"], "groups": list(got[0]["groups"])}
