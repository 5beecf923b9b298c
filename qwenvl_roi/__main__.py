"""`python -m qwenvl_roi ...` = `qwenvl-roi ...`; under torchrun: `torchrun ... -m qwenvl_roi predict ...`."""

import sys

from qwenvl_roi.cli import main

if __name__ == "__main__":
    sys.exit(main())
