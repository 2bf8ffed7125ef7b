"""`python -m podd_lib ...` runs the `podd` command (podd_lib.cli.main)."""

import sys

from podd_lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
