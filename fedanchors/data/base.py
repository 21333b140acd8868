"""Groups, a run's data (``ScenarioData``) and the splitting helpers the groups' build uses."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fedanchors.config import DataConfig
from fedanchors.errors import ConfigError, DataError
from fedanchors.names import check_name

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Split:
    """Inputs (N, ...) float32 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class GroupData:
    """One group: its name, its input space (which encoder it goes through) and splits.

    ``space`` is observable at test time (pixel size, modality); groups defined with the
    class label share a space and never choose an encoder by their group.
    """

    name: str
    space: str
    train: Split
    val: Split
    test: Split
    meta: dict = field(default_factory=dict)  # e.g. a text group's vocab_size and vocab
    gating: Split | None = None  # data.gating_fraction > 0: held out of train for a gate (the long-tail gate)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


@dataclass
class ScenarioData:
    """All groups of a scenario, in partition order (partition id = index)."""

    groups: list[GroupData]
    num_classes: int
    # named class subsets reported as ``acc_<name>`` over every test sample of those classes
    class_sets: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a scenario written in Python names its groups, spaces and class sets itself: the
        # same rule as YAML groups, since each becomes a metric key or a file name
        for g in self.groups:
            check_name(g.name, f"group {g.name!r}")
            check_name(g.space, f"group {g.name!r}'s input space", space=True)
        for k in self.class_sets:
            check_name(k, f"class set {k!r}")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def spaces(self) -> dict[str, GroupData]:
        """Input space -> the first group in it (its shape and meta build the encoder)."""
        out: dict[str, GroupData] = {}
        for g in self.groups:
            out.setdefault(g.space, g)
        return out


def check_labels(y: torch.Tensor, num_classes: int, source: Path | str, what: str = "label") -> None:
    """Every label in ``[0, num_classes)``, else a DataError naming the file and the bad value."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise DataError(
            f"{source}: {what} {bad} is outside the declared classes 0..{num_classes - 1}; fix or replace the file"
        )


def check_finite_rows(x: torch.Tensor, where: str, owners: list[str] | None = None) -> None:
    """Every value of ``x`` (N, ...) finite, else a DataError naming ``where``, the first bad
    example (and its owner: writer or speaker) and the value: NaN or inf in the inputs would
    otherwise surface as a diverged loss, pointing at the learning rate."""
    if not x.is_floating_point() or not len(x):
        return
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        value = x[i].reshape(-1)[~torch.isfinite(x[i].reshape(-1))][0].item()
        owner = f" ({owners[i]})" if owners is not None else ""
        raise DataError(
            f"{where}: example {i}{owner} holds {value} ({int(bad.sum())} examples with NaN or inf values); "
            "fix or replace the file"
        )


def data_root(cfg: DataConfig) -> Path:
    """``data.root``, else $FEDANCHORS_DATA, else ../shared/data; relative paths try the cwd, then the repo."""
    root = cfg.root or os.environ.get("FEDANCHORS_DATA") or "../shared/data"
    p = Path(root).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p


def split_fractions(n: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into disjoint parts by ``fractions`` (sum <= 1)."""
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ConfigError(f"fractions {fractions} must be >= 0 and sum to at most 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cuts, start, out = [round(f * n) for f in fractions], 0, []
    if abs(sum(fractions) - 1) < 1e-9:
        cuts[-1] = n - sum(cuts[:-1])  # fractions that cover everything lose no sample to rounding
    for c in cuts:
        out.append(perm[start : start + c])
        start += c
    return out


def cap(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``n`` examples (all when n is 0): files are often sorted by class."""
    if not n or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 7919))[:n].sort().values
    return x[keep], y[keep]


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) images to side x side."""
    return resize2d(x, side, side)


def resize2d(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H', W') to (N, C, h, w); unchanged when already that size."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
