"""`kubectl hotswap`: arguments, subcommands, output format and exit codes.

    kubectl hotswap status NAME  [-o text|json|yaml]
    kubectl hotswap history NAME [-o text|json|yaml]
    kubectl hotswap undo NAME [--to-revision N] [--dry-run] [-o text|json|yaml]
    kubectl hotswap pause NAME | resume NAME
    global: -n/--namespace, --kubeconfig, --context (anywhere on the line, as kubectl)

Exit codes: 0 done (or nothing to do), 1 an error (not found, refused, forbidden, a
conflicting edit, no connection; stderr says what and the fix), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hotswap_operator.kubectl import edits, views
from hotswap_operator.kubectl.api import (
    PluginError,
    Session,
    connect,
    get_deployment,
    patch_deployment,
)
from hotswap_operator.kubectl.reports import pod_reports

JSON = dict[str, Any]
PROG = "kubectl hotswap"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        session = connect(args.kubeconfig, args.context, args.namespace)
        text, doc = args.run(session, args)
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render(text, doc, args.output))
    return 0


def render(text: str, doc: JSON, output: str) -> str:
    if output == "json":
        return json.dumps(doc, indent=2)
    if output == "yaml":
        import yaml

        return str(yaml.safe_dump(doc, sort_keys=False)).rstrip()
    return text


# ---- subcommands --------------------------------------------------------------------

Result = tuple[str, JSON]


def status(session: Session, args: argparse.Namespace) -> Result:
    md = get_deployment(session, args.name)
    doc = views.status_document(md, pod_reports(session, md), _digest(md))
    return views.status_text(doc), doc


def history(session: Session, args: argparse.Namespace) -> Result:
    md = get_deployment(session, args.name)
    doc = views.history_document(md, pod_reports(session, md), _digest(md))
    return views.history_text(doc), doc


def undo(session: Session, args: argparse.Namespace) -> Result:
    edit = edits.undo(get_deployment(session, args.name), args.to_revision)
    if args.dry_run:
        return f"{edit.message} (dry run: nothing written)", {**edit.document, "dryRun": True}
    return _write(session, args.name, edit)


def pause(session: Session, args: argparse.Namespace) -> Result:
    return _write(session, args.name, edits.pause(get_deployment(session, args.name)))


def resume(session: Session, args: argparse.Namespace) -> Result:
    return _write(session, args.name, edits.resume(get_deployment(session, args.name)))


def _write(session: Session, name: str, edit: edits.Edit) -> Result:
    if edit.patch is not None:
        patch_deployment(session, name, edit.patch, edit.resource_version)
    return edit.message, edit.document


def _digest(md: JSON) -> str | None:
    try:
        return edits.current_digest(md)
    except edits.RefusedError:
        return None  # a spec the operator refuses too: status shows its error


# ---- arguments ----------------------------------------------------------------------

Command = Callable[[Session, argparse.Namespace], Result]
COMMANDS: dict[str, tuple[Command, str]] = {
    "status": (status, "phase, revisions, rollout state and each pod's last swap"),
    "history": (history, "the revisions of status.history and what became of each"),
    "undo": (undo, "set the spec back to an earlier revision (pods swap from cache)"),
    "pause": (pause, "hold a Canary rollout at its current step (spec.rollout.paused)"),
    "resume": (resume, "let a paused Canary rollout go on"),
}


def _globals(suppress: bool) -> argparse.ArgumentParser:
    """kubectl's connection flags; on subcommands too, so they may come anywhere."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")
    p.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument("--context", default=default, help="kubeconfig context (default: current)")
    return p


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and steer hotswap ModelDeployments (kubectl plugin).",
        parents=[_globals(suppress=False)],
    )
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (run, summary) in COMMANDS.items():
        sub = subs.add_parser(name, help=summary, description=summary, parents=[_globals(True)])
        sub.add_argument("name", metavar="NAME", help="the ModelDeployment")
        sub.add_argument(
            "-o", "--output", choices=("text", "json", "yaml"), default="text", help="format"
        )
        if name == "undo":
            sub.add_argument(
                "--to-revision",
                type=_positive,
                default=None,
                metavar="N",
                help="revision of `history` to go back to (default: the previous one)",
            )
            sub.add_argument(
                "--dry-run", action="store_true", help="say what would change, write nothing"
            )
        sub.set_defaults(run=run)
    return top


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: revisions start at 1")
    return value
