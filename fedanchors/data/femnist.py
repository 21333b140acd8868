"""FEMNIST (LEAF): handwritten digits and letters, 62 classes, each writer a natural client.

Reads LEAF's JSON layout under ``<root>/femnist/{train,test}/*.json`` (each file
``{"users", "num_samples", "user_data": {writer: {"x": [[784 floats]], "y": [labels]}}}``), so
LEAF's full download works as the 110-writer sample here does; the ``femnist`` source
(``fedanchors.data.sources.femnist``) gives its writers to groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedanchors.data.base import check_finite_rows
from fedanchors.errors import DataError

NUM_CLASSES = 62


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
