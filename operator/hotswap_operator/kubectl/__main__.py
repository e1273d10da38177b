"""`python -m hotswap_operator.kubectl` = the `kubectl-hotswap` console script.

`main` first checks that the `[kubectl]` extra is installed: `pip install hotswap` alone
lacks it, and a user should read which package is missing and the command that adds it,
not a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

# module -> its distribution: what the `kubectl` extra of pyproject.toml installs
NEEDED = {
    "yaml": "PyYAML",
    "kubernetes": "kubernetes",
    "prometheus_client": "prometheus-client",
    "pydantic": "pydantic",
}
INSTALL = "pip install 'hotswap[kubectl]' (from a checkout: pip install '.[kubectl]')"


def missing() -> list[str]:
    """The distributions of NEEDED whose module cannot be imported."""
    return [dist for module, dist in NEEDED.items() if _absent(module)]


def _absent(module: str) -> bool:
    try:
        return find_spec(module) is None
    except (ImportError, ValueError):  # a None in sys.modules, a broken package
        return True


def main(argv: Sequence[str] | None = None) -> int:
    lacking = missing()
    if lacking:
        print(
            f"error: kubectl hotswap needs the Python package(s) {', '.join(lacking)}, "
            f"which are not installed: {INSTALL}",
            file=sys.stderr,
        )
        return 1
    from hotswap_operator.kubectl.cli import main as run

    return run(argv)


def complete(argv: Sequence[str] | None = None) -> int:
    """`kubectl_complete-hotswap`: candidates for kubectl's TAB completion (complete.py);
    without the extra, none (a TAB never prints an error over the line)."""
    if missing():
        print(":4")
        return 0
    from hotswap_operator.kubectl.complete import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
