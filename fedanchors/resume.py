"""Checkpoint/resume helpers shared by both modes, and a clean stop on Ctrl-C.

A run writes ``checkpoints/resume.pt`` (centralized, every epoch) or
``checkpoints/server_resume.pt`` plus ``clients/<partition>/r<round>.pt`` (federated,
every round), atomically. ``python -m fedanchors.simulate --resume runs/X`` continues
from the last one and ends with exactly the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedanchors.errors import FedAnchorsError


class Interrupted(FedAnchorsError):
    """Ctrl-C: the run stopped at a boundary after writing its checkpoint."""


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)


def global_rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_metrics(run_path: Path, key: str, last: int) -> None:
    """Drop metrics.jsonl records past ``last`` (written after the checkpoint a kill left)."""
    path = run_path / "metrics.jsonl"
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by the kill
        if int(rec.get(key, 0)) <= last:
            keep.append(line)
    tmp = path.with_name("metrics.jsonl.tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)


class StopFlag:
    """While active, the first Ctrl-C asks the run to stop at the next epoch/round boundary
    (after its checkpoint); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> StopFlag:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. Flower's server thread): no handler
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step's checkpoint (Ctrl-C again to abort now)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
