"""scikit-learn's bundled UCI handwritten digits: 1,797 images of 8x8, no files needed."""

from fedanchors.data.digits import load_uci_digits
from fedanchors.data.sources import Pool, SourceData, source


@source("uci_digits", classes=10, modality="image", shape=(1, 8, 8))
def uci_digits(cfg, options) -> SourceData:
    """UCI digits (scikit-learn), 8x8 in [0, 1]; no official test split."""
    x, y = load_uci_digits()
    return SourceData(Pool(x, y))
