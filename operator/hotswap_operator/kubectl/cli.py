"""`kubectl hotswap`: arguments, subcommands, output format and exit codes.

    kubectl hotswap list [-A] [-o text|json|yaml]
    kubectl hotswap status NAME [--wait [--timeout 5m]] [-o text|json|yaml]
    kubectl hotswap history NAME [-o text|json|yaml]
    kubectl hotswap undo NAME [--to-revision N] [--dry-run] [-o text|json|yaml]
    kubectl hotswap set checkpoint NAME URI (--sha256 HEX | --resolve [--from PATH]
                                            [--registry-config PATH])
    kubectl hotswap pause NAME | resume NAME
    kubectl hotswap promote NAME [--full] | abort NAME | retry NAME
    kubectl hotswap dashboard NAME [--port N] [--address 127.0.0.1] [--edit]
    kubectl hotswap version [--client] [-o text|json|yaml]
    kubectl hotswap completion bash|zsh
    global: -n/--namespace, --kubeconfig, --context (anywhere on the line, as kubectl)

Exit codes: 0 done (or nothing to do), 1 an error (not found, refused, forbidden, a
conflicting edit, no connection; `status --wait` ending Degraded, Failed, RolledBack or
past its timeout; stderr says what and the fix), 2 a usage error. `status --wait` calls
again, with backoff, when the API server gives no answer, 429 or a 5xx.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from hotswap_operator.kubectl import checksum, completion, decisions, edits, hf, live, oci, views
from hotswap_operator.kubectl.access import may_edit
from hotswap_operator.kubectl.api import (
    PluginError,
    Session,
    TransientError,
    connect,
    get_deployment,
    list_deployments,
    operator_versions,
    patch_deployment,
    server_versions,
)
from hotswap_operator.kubectl.board import Board
from hotswap_operator.kubectl.reports import pod_reports
from hotswap_operator.kubectl.web import Access, Dashboard

JSON = dict[str, Any]
PROG = "kubectl hotswap"
DISTRIBUTION = "hotswap"  # pyproject.toml's project name: `version` reads its metadata


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    if getattr(args, "watch", False) and args.wait:
        top.error("status: --watch and --wait do not go together")
    try:
        if args.local is not None:  # needs no connection, or makes its own
            text, doc = args.local(args)
        else:
            text, doc = args.run(_connect(args), args)
    except PartialError as err:  # what was read is still worth printing
        print(render(err.text, err.doc, args.output))
        print(f"error: {err}", file=sys.stderr)
        return 1
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not getattr(args, "watch", False) and args.command != "dashboard":  # it drew as it went
        print(render(text, doc, args.output))
    return 0


def _connect(args: argparse.Namespace) -> Session:
    return connect(args.kubeconfig, args.context, args.namespace)


def render(text: str, doc: JSON, output: str) -> str:
    if output == "json":
        return json.dumps(doc, indent=2)
    if output == "yaml":
        import yaml

        return str(yaml.safe_dump(doc, sort_keys=False)).rstrip()
    return text


# ---- subcommands --------------------------------------------------------------------

Result = tuple[str, JSON]


class PartialError(PluginError):
    """A command failed after reading something worth printing: text and doc (stdout),
    then the message (stderr), exit 1."""

    def __init__(self, message: str, text: str, doc: JSON) -> None:
        super().__init__(message)
        self.text, self.doc = text, doc


class UnsettledError(PartialError):
    """`status --wait` ended without phase Ready: the message says why; text and doc are
    the last status read."""


def status(session: Session, args: argparse.Namespace) -> Result:
    if args.watch:
        return watch(session, args)
    md, problem = (
        wait(session, args.name, args.timeout)
        if args.wait
        else (get_deployment(session, args.name), None)
    )
    doc = views.status_document(md, pod_reports(session, md), _digest(md))
    if problem is not None:
        raise UnsettledError(problem, views.status_text(doc), doc)
    return views.status_text(doc), doc


MAX_BACKOFF = 16.0  # seconds between calls while the API server does not answer well
WATCH_INTERVAL = 2.0  # seconds between reads of `status --watch`


def watch(session: Session, args: argparse.Namespace) -> Result:
    """Redraw the status whenever it changes, until Ctrl-C (exit 0); polls with `get`
    (no `watch` permission), riding out an API server that does not answer."""

    def read() -> str:
        md = _read_until(session, args.name, math.inf, math.inf, WATCH_INTERVAL)
        doc = views.status_document(md, pod_reports(session, md), _digest(md))
        return render(views.status_text(doc), doc, args.output)

    header = f"Every {WATCH_INTERVAL:g}s: {PROG} status {session.where(args.name)} (Ctrl-C ends)"
    with contextlib.suppress(KeyboardInterrupt):
        live.follow(read, sys.stdout, WATCH_INTERVAL, header)
    return "", {}


def wait(
    session: Session, name: str, timeout: float, interval: float = 1.0
) -> tuple[JSON, str | None]:
    """Read the ModelDeployment until the operator has taken its spec and it is Ready
    (problem None) or Degraded, Failed or RolledBack, or `timeout` passes (a problem).
    Polls with `get`, so it needs no `watch` permission; a read that fails for a reason
    that passes (no answer, 429, 5xx) is made again with backoff until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        md = _read_until(session, name, deadline, timeout, interval)
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


def _read_until(
    session: Session, name: str, deadline: float, timeout: float, interval: float
) -> JSON:
    """get_deployment, called again after each TransientError (waiting `interval`, then
    twice as long each time up to MAX_BACKOFF) until `deadline`; one line on stderr says
    the first failure of a run of them."""
    failures = 0
    while True:
        try:
            return get_deployment(session, name)
        except TransientError as err:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PluginError(f"{err} (still failing after --timeout {timeout:g}s)") from None
            if failures == 0:
                print(f"warning: {err}; trying again until --timeout", file=sys.stderr)
            time.sleep(min(backoff(failures, interval), left))
            failures += 1


def backoff(failures: int, interval: float) -> float:
    """Seconds to wait after `failures` earlier failures in a row (0: the first)."""
    return float(min(interval * 2**failures, MAX_BACKOFF))


def list_(session: Session, args: argparse.Namespace) -> Result:
    doc = views.list_document(list_deployments(session, args.all_namespaces))
    return views.list_text(doc, None if args.all_namespaces else session.namespace), doc


def version(args: argparse.Namespace) -> Result:
    """The plugin's version; unless --client, what the cluster serves and the operator
    Deployments the user may list (the connection failing still prints the plugin's:
    exit 1, as `kubectl version`)."""
    doc: JSON = {"client": {"plugin": PROG, "version": plugin_version()}}
    if args.client:
        return views.version_text(doc), doc
    try:
        session = _connect(args)
        doc["server"] = server_versions(session)
        doc["operator"] = operator_versions(session)
    except PluginError as err:
        raise PartialError(str(err), views.version_text(doc), doc) from None
    return views.version_text(doc), doc


def plugin_version() -> str:
    """The installed hotswap distribution's version (package metadata)."""
    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (hotswap is not installed as a package: pip install '.[kubectl]')"


def completion_script(args: argparse.Namespace) -> Result:
    return completion.script(parser(), args.shell), {}


def history(session: Session, args: argparse.Namespace) -> Result:
    md = get_deployment(session, args.name)
    doc = views.history_document(md, pod_reports(session, md), _digest(md))
    return views.history_text(doc), doc


def undo(session: Session, args: argparse.Namespace) -> Result:
    edit = edits.undo(get_deployment(session, args.name), args.to_revision)
    if args.dry_run:
        return f"{edit.message} (dry run: nothing written)", {**edit.document, "dryRun": True}
    return _write(session, args.name, edit)


def set_checkpoint(session: Session, args: argparse.Namespace) -> Result:
    """spec.checkpoint to URI with --sha256, or with the sha256 --resolve computes by
    reading the file (from --from PATH, or the URI itself) on this machine; an oci://
    URI resolved from its registry is pinned to the manifest's digest, an hf:// URI's
    revision to its commit."""
    if args.resolve == (args.sha256 is not None):
        raise PluginError("set checkpoint: give --sha256 HEX or --resolve (one of them)")
    if args.copy is not None and not args.resolve:
        raise PluginError("set checkpoint: --from PATH goes with --resolve")
    if args.registry_config is not None and not args.resolve:
        raise PluginError("set checkpoint: --registry-config PATH goes with --resolve")
    uri, sha, note = _resolved(args)
    edit = edits.set_checkpoint(get_deployment(session, args.name), uri, sha)
    if note:
        document = {**edit.document, "pinnedFrom": args.uri}
        edit = dataclasses.replace(edit, message=edit.message + note, document=document)
    return _write(session, args.name, edit)


def _resolved(args: argparse.Namespace) -> tuple[str, str, str]:
    """The URI and sha256 `set checkpoint` writes, and what the output adds when the
    URI was pinned (an oci:// tag to its manifest, an hf:// revision to its commit)."""
    if not args.resolve or args.copy is not None:
        return args.uri, args.sha256 or checksum.sha256_of(args.uri, args.copy), ""
    if args.uri.startswith("oci://"):
        pinned = oci.resolve(args.uri, args.registry_config)
        note = (
            f"; the URI is pinned to manifest {pinned.manifest} (what its tag named now), "
            "so a tag moved later does not change the spec"
        )
        return pinned.uri, pinned.sha256, note if pinned.uri != args.uri else ""
    if args.uri.startswith("hf://"):
        uri = hf.pin(args.uri)
        note = (
            f"; the URI is pinned to commit {hf.hub_file(uri).revision} (what its revision "
            "named now), so a branch moved later does not change the spec"
        )
        return uri, checksum.sha256_of(uri), note if uri != args.uri else ""
    return args.uri, checksum.sha256_of(args.uri), ""


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


def dashboard(session: Session, args: argparse.Namespace) -> Result:
    """Serve the dashboard page until Ctrl-C; the URL (with this run's token) on stdout."""
    get_deployment(session, args.name)  # not found, forbidden: say so before serving
    access = Access(lambda: may_edit(session, args.name), args.edit)
    board = Board(session, args.name, access.cached)
    try:
        server = Dashboard((args.address, args.port), session, board, access)
    except OSError as err:
        raise PluginError(
            f"dashboard: cannot listen on {args.address}:{args.port} ({err.strerror}); "
            "pass another --port (0: any free one)"
        ) from None
    board.start()
    mode = "edits where your RBAC allows them" if args.edit else "read-only (--edit: buttons)"
    print(f"Dashboard of {session.where(args.name)}, {mode}; Ctrl-C ends:", flush=True)
    print(server.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    board.stop()
    server.server_close()
    return "", {}


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
    "dashboard": (dashboard, "a live web page of the pods, swaps and revisions (local)"),
}


def _globals(suppress: bool) -> argparse.ArgumentParser:
    """kubectl's connection flags; on subcommands too, so they may come anywhere."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")
    p.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG)")
    p.add_argument("--context", default=default, help="kubeconfig context (default: current)")
    return p


Local = Callable[[argparse.Namespace], Result]  # no connection, or its own
LOCAL: dict[str, tuple[Local, str]] = {
    "version": (version, "the plugin's version, and what the cluster serves"),
    "completion": (completion_script, "a shell completion script: bash or zsh"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and steer hotswap ModelDeployments (kubectl plugin).",
        parents=[_globals(suppress=False)],
    )
    top.set_defaults(local=None, output="text")
    subs = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = _add(subs, "list", "the ModelDeployments of a namespace, or of all (-A)")
    listing.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (as kubectl get -A)"
    )
    _output(listing)
    listing.set_defaults(run=list_)
    _set_parser(subs)
    for name, (run, summary) in COMMANDS.items():
        sub = _add(subs, name, summary)
        sub.add_argument("name", metavar="NAME", help="the ModelDeployment")
        if name != "dashboard":  # a page, not a document
            _output(sub)
        _options(name, sub)
        sub.set_defaults(run=run)
    shown = _add(subs, "version", LOCAL["version"][1])
    shown.add_argument("--client", action="store_true", help="the plugin's only: no connection")
    _output(shown)
    shell = _add(subs, "completion", LOCAL["completion"][1])
    shell.add_argument(
        "shell", choices=completion.SHELLS, help="source <(kubectl hotswap completion bash)"
    )
    for name, (local, _) in LOCAL.items():
        subs.choices[name].set_defaults(local=local)
    return top


def _set_parser(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`set checkpoint NAME URI (--sha256 HEX | --resolve [--from PATH])`."""
    setting = _add(subs, "set", "change a ModelDeployment's spec: set checkpoint NAME URI")
    what = setting.add_subparsers(dest="what", required=True, metavar="WHAT")
    sub = what.add_parser(
        "checkpoint",
        help="a new checkpoint: the pods verify it and swap it in",
        description="Set spec.checkpoint (uri and sha256); every pod verifies the file's "
        "sha256 and swaps it in without a restart.",
        parents=[_globals(True)],
    )
    sub.add_argument("name", metavar="NAME", help="the ModelDeployment")
    sub.add_argument("uri", metavar="URI", help="what the pods fetch: s3://, https://, file://")
    sub.add_argument("--sha256", metavar="HEX", help="the file's sha256 (sha256sum FILE)")
    sub.add_argument(
        "--resolve",
        action="store_true",
        help="compute the sha256 by reading the file here: --from PATH, else URI itself "
        "(a local path or file://, http(s), s3://, gs://, az:// or hf:// with your own "
        "credentials; oci://: the layer's digest from the registry's manifest, and the URI "
        "pinned to that manifest's digest; hf://: the revision pinned to its commit)",
    )
    sub.add_argument("--from", dest="copy", type=Path, metavar="PATH", help="a local copy to hash")
    sub.add_argument(
        "--registry-config",
        type=Path,
        metavar="PATH",
        help="a docker config with your registry login for oci:// (default: "
        "$DOCKER_CONFIG/config.json, else ~/.docker/config.json; none: anonymous)",
    )
    _output(sub)
    sub.set_defaults(run=set_checkpoint)


def _add(
    subs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=summary, description=summary, parents=[_globals(True)])


def _output(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "-o", "--output", choices=("text", "json", "yaml"), default="text", help="format"
    )


def _options(name: str, sub: argparse.ArgumentParser) -> None:
    """The options of the subcommands that take a ModelDeployment's NAME."""
    if name == "status":
        sub.add_argument(
            "-w",
            "--wait",
            action="store_true",
            help="wait until Ready (exit 0), or Degraded, Failed, RolledBack (exit 1); "
            "no answer, 429 or 5xx from the API server: try again until --timeout",
        )
        sub.add_argument(
            "--watch",
            action="store_true",
            help="redraw the status in place whenever it changes, until Ctrl-C "
            "(plain lines when not on a terminal)",
        )
        sub.add_argument(
            "--timeout",
            type=_duration,
            default=300.0,
            metavar="DURATION",
            help="how long --wait waits: 90, 90s, 5m, 1h (default 5m; exit 1 after)",
        )
    if name == "dashboard":
        sub.add_argument(
            "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
        )
        sub.add_argument(
            "--port", type=_port, default=0, help="port to listen on (default 0: a free one)"
        )
        sub.add_argument(
            "--edit",
            action="store_true",
            help="show pause, resume, promote, undo, abort and retry buttons (each where "
            "it applies) where your RBAC allows patch (a SelfSubjectAccessReview); "
            "read-only without it",
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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value}: give a port from 0 to 65535")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: revisions start at 1")
    return value
