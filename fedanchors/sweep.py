"""``python -m fedanchors.sweep``: the command lives in ``fedanchors.cli.sweep`` (the CLIs'
package, the one part of fedanchors that reaches the Flower layer); its names are here too."""

import sys

from fedanchors.cli.sweep import *  # noqa: F403
from fedanchors.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
