"""MNIST from torchvision's ``MNIST/raw`` IDX layout (the ``mnist`` source and the MNIST scenarios read it)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from fedanchors.config import DataConfig
from fedanchors.data.base import check_labels, data_root
from fedanchors.errors import DataError

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz); a malformed one is a DataError naming it."""
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; replace the file with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic); replace it with an intact copy")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} values); replace it")
    return body.reshape(dims)


def _find(raw_dir: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw_dir / name).is_file():
            return raw_dir / name
    return None


def _download(root: Path) -> None:
    from torchvision.datasets import MNIST

    for train in (True, False):
        try:
            MNIST(str(root), train=train, download=True)
        except Exception as e:  # network errors vary by platform
            raise DataError(f"downloading MNIST into {root} failed ({e}); copy MNIST/raw there by hand") from None


def load_mnist(cfg: DataConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The MNIST splits present under ``data.root``: {"train"?, "test"?} -> ((N,1,28,28) in [0,1], labels)."""
    base = data_root(cfg)
    # ../shared/data keeps torchvision's root in mnist/; a plain torchvision root works too
    root = next((r for r in (base / "mnist", base) if (r / "MNIST" / "raw").is_dir()), base / "mnist")
    raw_dir = root / "MNIST" / "raw"
    if cfg.download:
        _download(root)
    out = {}
    for split, (img, lab) in _FILES.items():
        pi, pl = _find(raw_dir, img), _find(raw_dir, lab)
        if pi and pl:
            x = torch.from_numpy(read_idx(pi).copy()).float().div_(255).unsqueeze(1)
            y = torch.from_numpy(read_idx(pl).astype(np.int64))
            if len(x) != len(y):
                raise DataError(f"{pi} has {len(x)} images but {pl} has {len(y)} labels; replace them")
            check_labels(y, 10, pl)
            out[split] = (x, y)
    if not out:
        raise DataError(
            f"no MNIST files in {raw_dir} (expected {_FILES['test'][0]}[.gz] under <root>/mnist/MNIST/raw "
            "or <root>/MNIST/raw); "
            "set data.root or FEDANCHORS_DATA to the folder holding MNIST/raw, or data.download: true"
        )
    return out


def mnist_pool(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every MNIST image present (train and test files together), to be split with a seed."""
    parts = load_mnist(cfg)
    xs, ys = zip(*parts.values())
    return torch.cat(xs), torch.cat(ys)
