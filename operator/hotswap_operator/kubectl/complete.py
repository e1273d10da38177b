"""`kubectl_complete-hotswap`: the words that complete a `kubectl hotswap` command line.

kubectl (1.26 and later) completes a plugin's arguments by running the executable
`kubectl_complete-<plugin>` from PATH with the words after the plugin's name, the last
one being the word under the cursor (maybe empty), and reads cobra's answer: one
candidate per line, then `:<directive>` (4: offer no file names). The bash and zsh
scripts of `kubectl hotswap completion` call it too, for ModelDeployment names.

Subcommands, flags and choices come from the argparse parser (`cli.parser`); a NAME
from the cluster: the ModelDeployments of the line's own -n/--kubeconfig/--context,
listed in at most TIMEOUT seconds. A failure (no kubeconfig, forbidden, no answer)
offers nothing and prints nothing else: a TAB never writes an error over the line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

NO_FILES = 4  # cobra's ShellCompDirectiveNoFileComp
TIMEOUT = 3.0  # seconds the API server has to list the names


@dataclass
class Line:
    """What the words before the cursor say: the (sub)command, positionals, flags."""

    parsers: list[argparse.ArgumentParser]
    positionals: int = 0  # NAME, URI, ... given after the command
    values: dict[str, str] = field(default_factory=dict)  # dest -> value, as typed
    pending: argparse.Action | None = None  # the flag whose value is under the cursor


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv) or [""]
    for word in candidates(words[:-1], words[-1]):
        print(word)
    print(f":{NO_FILES}")
    return 0


def candidates(before: Sequence[str], current: str) -> list[str]:
    """The words that may stand where `current` is being typed."""
    from hotswap_operator.kubectl import cli

    line = read(cli.parser(), before)
    if line.pending is not None:
        choices = line.pending.choices
        return _starting(current, [str(c) for c in choices] if choices is not None else [])
    if current.startswith("-"):
        return _starting(current, [f for p in line.parsers for f in _flags(p)])
    if line.positionals == 0 and _subparsers(line.parsers[-1]):
        return _starting(current, list(_subparsers(line.parsers[-1])))
    if line.positionals == 0 and _names_first(line.parsers[-1]):
        return _starting(current, names(line.values))
    if line.positionals == 0:
        return _starting(current, _choices(line.parsers[-1]))
    return []


def read(top: argparse.ArgumentParser, words: Sequence[str]) -> Line:
    line = Line([top])
    for word in words:
        if line.pending is not None:
            line.values[line.pending.dest] = word
            line.pending = None
        elif word.startswith("-"):
            flag, _, value = word.partition("=")
            action = _action(line.parsers, flag)
            if action is not None and action.nargs != 0:
                if value or "=" in word:
                    line.values[action.dest] = value
                else:
                    line.pending = action
        elif (sub := _subparsers(line.parsers[-1]).get(word)) is not None and not line.positionals:
            line.parsers.append(sub)
        else:
            line.positionals += 1
    return line


def names(values: dict[str, str]) -> list[str]:
    """The ModelDeployments of the namespace the line names, or none on any failure."""
    from hotswap_operator.kubectl.api import connect, list_deployments

    try:
        where = (values.get("kubeconfig"), values.get("context"), values.get("namespace"))
        found = list_deployments(connect(*where, timeout=TIMEOUT))
    except Exception:  # any failure: a TAB offers nothing rather than a traceback
        return []
    return sorted(str((md.get("metadata") or {}).get("name")) for md in found)


def _starting(prefix: str, words: Sequence[str]) -> list[str]:
    return [w for w in dict.fromkeys(words) if w.startswith(prefix)]


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings]


def _action(parsers: Sequence[argparse.ArgumentParser], flag: str) -> argparse.Action | None:
    for parser in reversed(parsers):
        for action in parser._actions:
            if flag in action.option_strings:
                return action
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _names_first(parser: argparse.ArgumentParser) -> bool:
    """Whether the subcommand's first positional is a ModelDeployment's NAME."""
    first = next((a for a in parser._actions if not a.option_strings), None)
    return first is not None and first.metavar == "NAME"


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    first = next((a for a in parser._actions if not a.option_strings), None)
    return [str(c) for c in first.choices] if first and first.choices is not None else []
