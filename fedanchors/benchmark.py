"""``python -m fedanchors.benchmark``: the command lives in ``fedanchors.cli.benchmark`` (the CLIs'
package, the one part of fedanchors that reaches the Flower layer); its names are here too."""

import sys

from fedanchors.cli.benchmark import *  # noqa: F403
from fedanchors.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
