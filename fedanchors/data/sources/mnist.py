"""MNIST from torchvision's ``MNIST/raw`` IDX files under ``data.root``."""

from dataclasses import dataclass

from fedanchors.data.mnist import load_mnist, mnist_pool
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.errors import DataError


@dataclass(frozen=True)
class MnistOptions:
    """``pool: true`` pools every MNIST file present and splits it with ``data.split_seed``;
    ``false`` keeps the official split (test from the t10k files; both files needed)."""

    pool: bool = True


@source("mnist", classes=10, modality="image", shape=(1, 28, 28), options=MnistOptions, official_test=True)
def mnist(cfg, options: MnistOptions) -> SourceData:
    """MNIST 28x28 in [0, 1]; official test split with ``options: {pool: false}``."""
    if options.pool:
        return SourceData(Pool(*mnist_pool(cfg)))
    files = load_mnist(cfg)
    if set(files) != {"train", "test"}:
        raise DataError(
            "mnist pool: false (a group's options.pool) needs both official MNIST "
            f"files, found only {sorted(files)}; "
            "set pool: true to split the files present"
        )
    return SourceData(Pool(*files["train"]), Pool(*files["test"]))
