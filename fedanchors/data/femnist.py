"""FEMNIST (LEAF): handwritten digits and letters, 62 classes, each writer a natural client.

Reads LEAF's JSON layout under ``<root>/femnist/{train,test}/*.json`` (each file
``{"users", "num_samples", "user_data": {writer: {"x": [[784 floats]], "y": [labels]}}}``), so
LEAF's full download works as the 110-writer sample here does. Each writer keeps its own
train/test split; validation is carved from the writer's training images (seeded). The
writers are split at random into two input-space groups: ``hi`` (28x28) and ``lo``
(downsampled to ``lo_size``, a minority input space with its own encoder). Every split
carries its writers (``GroupData.meta["owners"]``), which ``federated.partition: natural``
turns into one client per writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedanchors.config import DataConfig
from fedanchors.data.base import (
    GroupData,
    ScenarioData,
    Split,
    check_finite_rows,
    data_root,
    options_dataclass,
    resize,
    scenario,
    scenario_options,
    split_fractions,
)
from fedanchors.errors import ConfigError, DataError

NUM_CLASSES = 62


@options_dataclass
class FemnistOptions:
    """Share of writers in the ``hi`` group, the ``lo`` group's pixel size, and a writer cap."""

    hi_fraction: float = 0.8
    lo_size: int = 14
    max_writers: int = 0  # 0: all


def _read(path: Path) -> dict[str, tuple[list, list]]:
    """{writer: (x rows, labels)} of one LEAF JSON file; a broken file names itself and the key."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable LEAF JSON file ({type(e).__name__}); replace it") from None
    for key in ("users", "user_data"):
        if not isinstance(raw, dict) or key not in raw:
            raise DataError(f"{path}: LEAF JSON without '{key}'; replace the file")
    out = {}
    for w in raw["users"]:
        rec = raw["user_data"].get(w)
        if not isinstance(rec, dict) or "x" not in rec or "y" not in rec or len(rec["x"]) != len(rec["y"]):
            raise DataError(f"{path}: user_data[{w!r}] lacks matching 'x' and 'y'; replace the file")
        out[w] = (rec["x"], rec["y"])
    return out


def load_leaf(folder: Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """{"train"|"test": {writer: (x (n, 1, 28, 28) ink-bright in [0, 1], y (n,))}}."""
    out: dict[str, dict] = {}
    for split in ("train", "test"):
        files = sorted((folder / split).glob("*.json"))
        if not files:
            raise DataError(f"{folder / split}: no LEAF JSON files; set data.root to the folder holding femnist/")
        writers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for f in files:
            for w, (x, y) in _read(f).items():
                try:
                    xt = torch.tensor(x, dtype=torch.float32)
                except (TypeError, ValueError, RuntimeError, OverflowError):
                    raise DataError(f"{f}: writer {w!r}: 'x' is not a table of numbers; replace the file") from None
                if xt.ndim != 2 or xt.shape[1] != 784:
                    raise DataError(f"{f}: user_data[{w!r}]['x'] rows are not 784 pixels; replace the file")
                check_finite_rows(xt, f"{f}: writer {w!r}")
                # LEAF stores 1.0 as white paper: invert to bright ink on black, as MNIST
                writers[w] = (1.0 - xt.view(-1, 1, 28, 28), torch.tensor(y, dtype=torch.int64))
        out[split] = writers
    return out


@scenario("femnist", FemnistOptions)
def femnist(cfg: DataConfig) -> ScenarioData:
    o = scenario_options(FemnistOptions, cfg)
    if not 0 < o.hi_fraction < 1:
        raise ConfigError(f"data.options.hi_fraction must be in (0, 1), got {o.hi_fraction}")
    if not 4 <= o.lo_size <= 28:
        raise ConfigError(f"data.options.lo_size must be in 4..28, got {o.lo_size}")
    data = load_leaf(data_root(cfg) / "femnist")
    writers = sorted(w for w in data["train"] if w in data["test"])
    if o.max_writers:
        writers = writers[: o.max_writers]
    if len(writers) < 2:
        raise DataError(f"{data_root(cfg) / 'femnist'}: fewer than 2 writers with both a train and a test file")
    perm = torch.randperm(len(writers), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    n_hi = min(len(writers) - 1, max(1, round(o.hi_fraction * len(writers))))
    members = {"hi": sorted(perm[:n_hi]), "lo": sorted(perm[n_hi:])}
    groups = []
    for name, idx in members.items():
        side = 28 if name == "hi" else o.lo_size
        parts: dict[str, list] = {"train": [], "val": [], "test": []}
        for k, wi in enumerate(idx):
            w = writers[wi]
            x, y = data["train"][w]
            val, train = split_fractions(len(y), [cfg.val_fraction, 1 - cfg.val_fraction], cfg.split_seed + wi)
            for split, (xs, ys) in {
                "train": (x[train], y[train]),
                "val": (x[val], y[val]),
                "test": data["test"][w],
            }.items():
                parts[split].append((resize(xs, side), ys, torch.full((len(ys),), k)))
        splits = {s: [torch.cat([p[i] for p in v]) for i in range(3)] for s, v in parts.items()}
        owners = {s: v[2] for s, v in splits.items()}
        groups.append(
            GroupData(
                name,
                f"px{side}",
                *(Split(splits[s][0], splits[s][1]) for s in ("train", "val", "test")),
                meta={"owners": owners, "writers": [writers[i] for i in idx]},
            )
        )
    sets = {"digits": list(range(10)), "letters": list(range(10, NUM_CLASSES))}
    return ScenarioData(groups, NUM_CLASSES, class_sets=sets)
