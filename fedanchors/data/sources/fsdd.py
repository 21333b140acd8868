"""Free Spoken Digit Dataset: ``<root>/fsdd/recordings/{digit}_{speaker}_{index}.wav`` at 8 kHz."""

from dataclasses import dataclass

from fedanchors.data.audio import SAMPLE_RATE, load_fsdd
from fedanchors.data.base import data_root
from fedanchors.data.sources import Pool, SourceData, source
from fedanchors.errors import DataError


@dataclass(frozen=True)
class FsddOptions:
    """Waveforms are cut or zero-padded to ``seconds``."""

    seconds: float = 1.0


def _shape(o: FsddOptions) -> tuple[int, ...]:
    return (int(o.seconds * SAMPLE_RATE),)


@source(
    "fsdd",
    classes=10,
    modality="audio",
    shape=_shape,
    options=FsddOptions,
    official_test=True,
    owners="speakers",
)
def fsdd(cfg, options: FsddOptions) -> SourceData:
    """Spoken digits as waveforms; official split (recordings 0-4 of each speaker are test)."""
    if options.seconds <= 0:
        raise DataError(f"fsdd options.seconds must be > 0, got {options.seconds}")
    parts = load_fsdd(data_root(cfg) / "fsdd", options.seconds)
    if set(parts) != {"train", "test"}:
        raise DataError("FSDD needs recordings with index 0-4 (test) and 5-49 (train); some are missing")
    return SourceData(*(Pool(w, y, list(s)) for w, y, s in (parts["train"], parts["test"])))
