"""Run directories: config.yaml, metrics.jsonl, summary.json, checkpoints/.

A new run never writes into an existing directory: ``runs/<name>`` is taken if free,
else ``runs/<name>-2``, ``-3``, ... so nothing already written is lost.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedanchors.config import Config, save_config
from fedanchors.errors import ConfigError
from fedanchors.fileio import append_line, write_atomic, write_error


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if isinstance(v, torch.Tensor):
        return _jsonable(v.item() if v.numel() == 1 else v.tolist())
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def fresh_dir(out_dir: str, name: str) -> Path:
    """A new directory ``out_dir/name`` (``name-2``, ``name-3``, ... when taken)."""
    base = Path(out_dir) / name
    path, k = base, 1
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                path.mkdir()
                return path
            except FileExistsError:
                k += 1
                path = base.with_name(f"{base.name}-{k}")
    except OSError as e:
        raise ConfigError(
            f"out_dir: cannot create a run directory under {out_dir!r} ({e.strerror}); pick a writable out_dir"
        ) from None


class RunLock:
    """An exclusive ``flock`` on the run directory itself for as long as a process writes it.

    The kernel drops it when the holder exits, however it dies, so a stale lock never
    blocks a resume after a crash; a second live writer gets a one-line error with the
    holder's pid (read from /proc/locks). No file is added to the directory.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _lock_holder(path)
            os.close(self.fd)
            self.fd = -1
            raise ConfigError(
                f"run directory {path} is in use by process {holder} (a run or a --resume still writing it); "
                "wait for it to end or stop it, then try again"
            ) from None

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _lock_holder(path: Path) -> str:
    """The pid holding a flock on ``path`` according to /proc/locks, or 'unknown'."""
    try:
        inode = os.stat(path).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                return parts[4]
    except OSError:
        pass
    return "unknown"


class RunDir:
    """The files of one run; a process holds its lock (``RunLock``) while it writes them."""

    def __init__(self, path: Path, lock: bool = True) -> None:
        self.path = path
        self.trackers: list = []  # wandb / TensorBoard (fedanchors.tracking), fed by ``log``
        self.lock = RunLock(path) if lock else None

    def release(self) -> None:
        """Give up the run directory (its lock); idempotent."""
        if self.lock is not None:
            self.lock.release()

    @classmethod
    def create(cls, cfg: Config) -> RunDir:
        """Make a fresh directory under ``cfg.out_dir`` and save the resolved config."""
        return cls._init(fresh_dir(cfg.out_dir, cfg.name or "run"), cfg)

    @classmethod
    def create_at(cls, path: Path, cfg: Config) -> RunDir:
        """A run directory at exactly ``path`` (``flwr run``'s ``run-dir``, which the clients
        are told too); one that already holds a run is refused."""
        if (path / "config.yaml").exists():
            raise ConfigError(f"run directory {path} already holds a run; pick a new run-dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"run-dir: cannot create {path} ({e.strerror}); pick a writable path") from None
        return cls._init(path, cfg)

    @classmethod
    def _init(cls, path: Path, cfg: Config) -> RunDir:
        run = cls(path)
        try:
            (path / "checkpoints").mkdir(exist_ok=True)
            save_config(cfg, path / "config.yaml")
        except OSError as e:
            run.release()
            raise write_error(e, path / "config.yaml") from None
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, lock: bool = True) -> RunDir:
        """An existing run directory (locked for writing unless ``lock=False``, for readers
        such as evaluate and compare); one without config.yaml is an error."""
        p = Path(path)
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"{p} is not a fedanchors run directory (no config.yaml); pass the directory of a run")
        return cls(p, lock=lock)

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl, and pass the record to the trackers."""
        append_line(self.path / "metrics.jsonl", json.dumps(_jsonable(record)))
        for t in self.trackers:
            t.log(record)

    def close_trackers(self, images: dict[str, Path], step: int) -> None:
        """Give the trackers the run's images, then close them."""
        for t in self.trackers:
            if images:
                t.images(images, step)
            t.finish()
        self.trackers = []

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically."""
        write_atomic(self.path / "summary.json", (json.dumps(_jsonable(summary), indent=2) + "\n").encode())

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / name


def versions() -> dict[str, str]:
    """The versions that produced a result (read from package metadata: flwr is not imported)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "flwr", "ray", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # torch.manual_seed's CPU seeding, and CUDA's where there is CUDA: without it, manual_seed
    # queues a lazy CUDA seeding with its call stack on every call (clients call this per message)
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # setting it costs ~15 ms a call (clients call this per message): only when it changes
        if not (torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()):
            torch.use_deterministic_algorithms(True, warn_only=True)
