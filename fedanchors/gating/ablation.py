"""``python -m fedanchors.gating.ablation``: the command lives in ``fedanchors.cli.gating_ablation``."""

import sys

from fedanchors.cli.gating_ablation import *  # noqa: F403
from fedanchors.cli.gating_ablation import VARIANTS, ablation, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
