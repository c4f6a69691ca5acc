"""``python -m lmlab COMMAND``: see lmlab.cli."""

import sys

from lmlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
