"""`python -m hotswap_operator.kubectl` = the `kubectl-hotswap` console script."""

from __future__ import annotations

import sys

from hotswap_operator.kubectl.cli import main

if __name__ == "__main__":
    sys.exit(main())
