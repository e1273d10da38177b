"""A module on the test runtimes' allowlist (``python/tests.fixtures_runtime``) that
imports callables it does not define beside factories of its own, as real packages
do: ``python/tests.fixtures_runtime.reexports:<name>`` may call only the latter."""

from __future__ import annotations

import functools
from subprocess import run  # what model.json must not reach

from torch import nn
from torch.hub import load  # noqa: F401  (downloads, or imports a hubconf.py)
from torch.nn import Linear  # noqa: F401

from devcluster import tiny


def make(**kwargs: int) -> nn.Module:
    """A factory defined here."""
    return tiny.make_model(**kwargs)


class Net(nn.Linear):
    """A class defined here."""

    def __init__(self, width: int = tiny.FEATURES) -> None:
        super().__init__(width, tiny.CLASSES)


small = functools.partial(Net, width=2)  # a partial of a class defined here
shell = functools.partial(run, shell=True)  # a partial of a name imported here
