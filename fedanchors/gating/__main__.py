"""``python -m fedanchors.gating``: the command lives in ``fedanchors.cli.gating``."""

import sys

from fedanchors.cli.gating import main

if __name__ == "__main__":
    sys.exit(main())
