"""Optional experiment trackers beside ``metrics.jsonl``: wandb and TensorBoard.

Both write into the run directory. wandb runs offline unless ``logging.wandb_mode`` says
otherwise (``wandb sync runs/<name>/wandb/offline-run-*`` uploads later); it gets the
config, every metrics record and, at the end, the plots and sample grids as images.
TensorBoard gets the scalars and the same images under ``runs/<name>/tensorboard``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedanchors.config import Config, to_dict
from fedanchors.errors import ConfigError
from fedanchors.registry import Registry

TRACKERS: Registry = Registry("tracker")


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _step(record: dict[str, Any]) -> int:
    return int(record.get("round", record.get("epoch", 0)))


@TRACKERS.register("wandb")
class WandbTracker:
    """A wandb run in ``<run>/wandb`` (offline by default: no network needed)."""

    def __init__(self, cfg: Config, path: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logging.wandb: true needs the wandb package; pip install wandb") from None
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.logging.wandb_project,
            name=path.name,
            dir=str(path),
            config=to_dict(cfg),
            mode=cfg.logging.wandb_mode,
            reinit="finish_previous",
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(_scalars(record), step=_step(record))

    def images(self, images: dict[str, Path], step: int) -> None:
        self.run.log({k: self.wandb.Image(str(p)) for k, p in images.items()}, step=step)

    def finish(self) -> None:
        self.run.finish()


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Scalars and image grids in ``<run>/tensorboard``."""

    def __init__(self, cfg: Config, path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logging.tensorboard: true needs the tensorboard package; pip install tensorboard"
            ) from None
        self.writer = SummaryWriter(log_dir=str(path / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        step = _step(record)
        for k, v in _scalars(record).items():
            self.writer.add_scalar(k.replace(":", "/"), v, step)

    def images(self, images: dict[str, Path], step: int) -> None:
        from PIL import Image

        for k, p in images.items():
            with Image.open(p) as im:
                self.writer.add_image(k, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def finish(self) -> None:
        self.writer.close()


def build_trackers(cfg: Config, path: Path) -> list:
    """The trackers the config switches on."""
    names = [n for n, on in (("wandb", cfg.logging.wandb), ("tensorboard", cfg.logging.tensorboard)) if on]
    return [TRACKERS.get(n, "logging")(cfg, path) for n in names]
