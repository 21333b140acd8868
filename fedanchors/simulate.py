"""``python -m fedanchors.simulate``: the command lives in ``fedanchors.cli.simulate`` (the CLIs'
package, the one part of fedanchors that reaches the Flower layer); its names are here too."""

import sys

from fedanchors.cli.simulate import *  # noqa: F403
from fedanchors.cli.simulate import (
    main,
)

if __name__ == "__main__":
    sys.exit(main())
