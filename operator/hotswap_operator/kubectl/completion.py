"""`kubectl hotswap completion bash|zsh`: a shell completion script, derived from the
argparse parser (pure), so every subcommand, flag and choice is in it without a list to
keep up to date.

The script completes the `kubectl-hotswap` command (subcommands, each one's flags, the
values of `-o` and of `completion`, files after `--kubeconfig`). zsh runs the same
function through bashcompinit. A ModelDeployment's NAME comes from the cluster: the
script asks `kubectl_complete-hotswap` (complete.py), which kubectl itself runs to
complete `kubectl hotswap ...` (kubectl 1.26 and later).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

FUNCTION = "_kubectl_hotswap"
COMMAND = "kubectl-hotswap"
COMPLETER = "kubectl_complete-hotswap"  # complete.py: kubectl's plugin completion, names
ASK = f'COMPREPLY=($({COMPLETER} "${{COMP_WORDS[@]:1:COMP_CWORD}}" 2>/dev/null | grep -v "^:"))'
SHELLS = ("bash", "zsh")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    body = bash(parser)
    if shell == "bash":
        return body
    return "\n".join(
        [
            f"# zsh completion for {COMMAND}: source <({COMMAND} completion zsh)",
            "(( $+functions[compdef] )) || { autoload -U compinit && compinit }",
            "autoload -U +X bashcompinit && bashcompinit",
            body,
        ]
    )


def bash(parser: argparse.ArgumentParser) -> str:
    commands = subcommands(parser)
    cases = [_case(name, sub) for name, sub in commands.items()]
    top = _words([*commands, *_flags(parser)])
    lines = [
        f"# bash completion for {COMMAND}: source <({COMMAND} completion bash)",
        f"{FUNCTION}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    local cmd="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        f'            {"|".join(commands)}) cmd="${{COMP_WORDS[i]}}"; break ;;',
        "        esac",
        "    done",
        '    case "$prev" in',
        *_value_cases(parser, commands.values()),
        "    esac",
        '    case "$cmd" in',
        *cases,
        f'        *) COMPREPLY=($(compgen -W "{top}" -- "$cur")) ;;',
        "    esac",
        "}",
        f"complete -F {FUNCTION} {COMMAND}",
    ]
    return "\n".join(lines)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand of `parser` and its own parser, in the order of `--help`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings]


def _case(name: str, sub: argparse.ArgumentParser) -> str:
    positional = [
        str(choice)
        for action in sub._actions
        if not action.option_strings and action.choices is not None
        for choice in action.choices
    ]
    words = _words([*positional, *_flags(sub)])
    offer = f'COMPREPLY=($(compgen -W "{words}" -- "$cur"))'
    if not _names_ahead(sub):
        return f"        {name}) {offer} ;;"
    return f"        {name}) if [[ $cur == -* ]]; then {offer}; else {ASK}; fi ;;"


def _names_ahead(sub: argparse.ArgumentParser) -> bool:
    """Whether a ModelDeployment's NAME is among the subcommand's positionals (`set`:
    its `checkpoint`'s): those words come from the cluster, through COMPLETER."""
    nested = [
        p
        for a in sub._actions
        if isinstance(a, argparse._SubParsersAction)
        for p in a.choices.values()
    ]
    return any(a.metavar == "NAME" for p in (sub, *nested) for a in p._actions)


def _value_cases(
    parser: argparse.ArgumentParser, subs: Iterable[argparse.ArgumentParser]
) -> list[str]:
    """After a flag that takes a value: its choices, a file name, or nothing."""
    cases: dict[str, str] = {}
    for action in [a for p in (parser, *subs) for a in p._actions]:
        if not action.option_strings or action.nargs == 0:
            continue
        pattern = "|".join(action.option_strings)
        if action.choices is not None:
            choices = _words(str(c) for c in action.choices)
            cases[pattern] = f'COMPREPLY=($(compgen -W "{choices}" -- "$cur")); return ;;'
        elif action.dest == "kubeconfig":
            cases[pattern] = 'COMPREPLY=($(compgen -f -- "$cur")); return ;;'
        else:
            cases[pattern] = "return ;;"  # a value the user types: offer nothing
    return [f"        {pattern}) {action}" for pattern, action in cases.items()]


def _words(words: Iterable[str]) -> str:
    return " ".join(dict.fromkeys(words))
