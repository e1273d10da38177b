"""`kubectl hotswap`: arguments, subcommands, output format and exit codes.

    kubectl hotswap status NAME [--wait [--timeout 5m]] [-o text|json|yaml]
    kubectl hotswap history NAME [-o text|json|yaml]
    kubectl hotswap undo NAME [--to-revision N] [--dry-run] [-o text|json|yaml]
    kubectl hotswap pause NAME | resume NAME
    kubectl hotswap promote NAME [--full] | abort NAME | retry NAME
    global: -n/--namespace, --kubeconfig, --context (anywhere on the line, as kubectl)

Exit codes: 0 done (or nothing to do), 1 an error (not found, refused, forbidden, a
conflicting edit, no connection; `status --wait` ending Degraded, Failed, RolledBack or
past its timeout; stderr says what and the fix), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hotswap_operator.kubectl import decisions, edits, views
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
    except UnsettledError as err:  # the status is still worth printing
        print(render(err.text, err.doc, args.output))
        print(f"error: {err}", file=sys.stderr)
        return 1
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


class UnsettledError(PluginError):
    """`status --wait` ended without phase Ready: the message says why; text and doc are
    the last status read."""

    def __init__(self, message: str, text: str, doc: JSON) -> None:
        super().__init__(message)
        self.text, self.doc = text, doc


def status(session: Session, args: argparse.Namespace) -> Result:
    md, problem = (
        wait(session, args.name, args.timeout)
        if args.wait
        else (get_deployment(session, args.name), None)
    )
    doc = views.status_document(md, pod_reports(session, md), _digest(md))
    if problem is not None:
        raise UnsettledError(problem, views.status_text(doc), doc)
    return views.status_text(doc), doc


def wait(
    session: Session, name: str, timeout: float, interval: float = 1.0
) -> tuple[JSON, str | None]:
    """Read the ModelDeployment until the operator has taken its spec and it is Ready
    (problem None) or Degraded, Failed or RolledBack, or `timeout` passes (a problem).
    Polls with `get`, so it needs no `watch` permission."""
    deadline = time.monotonic() + timeout
    while True:
        md = get_deployment(session, name)
        settled, problem = views.verdict(md)
        left = deadline - time.monotonic()
        if settled:
            return md, problem
        if left <= 0:
            phase = (md.get("status") or {}).get("phase") or "no phase yet"
            return md, (
                f"{session.where(name)} did not settle within {timeout:g}s (phase {phase}); "
                "`kubectl hotswap status` shows where each pod stands"
            )
        time.sleep(min(interval, left))


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


def promote(session: Session, args: argparse.Namespace) -> Result:
    edit = decisions.promote(get_deployment(session, args.name), args.full)
    return _write(session, args.name, edit)


def abort(session: Session, args: argparse.Namespace) -> Result:
    return _write(session, args.name, decisions.abort(get_deployment(session, args.name)))


def retry(session: Session, args: argparse.Namespace) -> Result:
    return _write(session, args.name, decisions.retry(get_deployment(session, args.name)))


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
    "promote": (promote, "skip the rest of the step's bake (--full: every step)"),
    "abort": (abort, "roll the running Canary candidate back to stable now"),
    "retry": (retry, "run the rolled-back revision again from step 1"),
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
        if name == "status":
            sub.add_argument(
                "-w",
                "--wait",
                action="store_true",
                help="wait until Ready (exit 0), or Degraded, Failed, RolledBack (exit 1)",
            )
            sub.add_argument(
                "--timeout",
                type=_duration,
                default=300.0,
                metavar="DURATION",
                help="how long --wait waits: 90, 90s, 5m, 1h (default 5m; exit 1 after)",
            )
        if name == "promote":
            sub.add_argument(
                "--full",
                action="store_true",
                help="skip every remaining step and bake: all pods take the candidate",
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


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90, 90s, 5m, 1h)") from None
    if not 0 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"{text}: give a duration from 0 to 24h")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: revisions start at 1")
    return value
