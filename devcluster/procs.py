"""Child processes that never outlive the test process.

Every child is started in its own process group (so stopping it also stops whatever it
spawned) and with a parent-death signal: if the Python process dies without cleaning up
(a crash, SIGKILL), the kernel sends SIGKILL to each child. Linux sends that signal when
the *thread* that forked the child ends, so all children are forked from one long-lived
spawner thread rather than from whichever (possibly short-lived) thread asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

# Runs in the child before exec: set the parent-death signal, then check that the parent
# did not die before it was set (prctl would never fire then), then exec the command.
_LAUNCHER = (
    "import ctypes,os,sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as e:\n"
    "    print(f'cannot run {sys.argv[2]!r}: {e}', file=sys.stderr)\n"
    "    os._exit(127)\n"
)

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-spawner")


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, stdout and stderr appended to `log`.

    The returned process's pid is the command's own (the launcher execs it).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    parent = os.getpid()
    cmd = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(parent), *argv]

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )

    return _spawner.submit(start).result()


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still exists (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM the process group of `proc`, SIGKILL it after `grace` seconds.

    Waits until no process of the group is left; returns the leader's exit code.
    """
    pgid = proc.pid  # leader of its own session and group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None or group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()
        kill_deadline = time.monotonic() + 5
        while group_alive(pgid) and time.monotonic() < kill_deadline:
            time.sleep(0.05)
    return proc.returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_started(
    name: str,
    check: Callable[[], bool],
    deadline: float,
    *,
    children: Mapping[str, subprocess.Popen[bytes]],
    logs: Path,
    error: type[Exception],
    interval: float = 0.1,
) -> None:
    """Poll `check` until it is true while every child keeps running.

    Raises `error` naming the child that exited (with its log's tail), or `name` if
    `deadline` (a `time.monotonic()` value) passes first; each child logs to
    `logs / f"{child}.log"`.
    """
    while True:
        for child, proc in children.items():
            if proc.poll() is not None:
                log = logs / f"{child}.log"
                raise error(
                    f"{child} exited with {proc.returncode} while starting; its log {log} "
                    f"ends:\n{tail(log)}"
                )
        if check():
            return
        if time.monotonic() > deadline:
            log = logs / f"{name}.log"
            raise error(f"{name} not ready in time; log {log} ends:\n{tail(log)}")
        time.sleep(interval)


class StartError(RuntimeError):
    """A server that `serving` started exited, or did not answer in time."""


@contextmanager
def serving(
    name: str,
    argv: Sequence[str],
    ready: Callable[[], object],
    *,
    logs: Path,
    timeout: float = 30.0,
    error: type[Exception] = StartError,
) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` as child `name` (logging to `logs / f"{name}.log"`) for the block: entered
    once `ready()` returns a truthy value (exceptions count as "not yet") while the child
    runs, else `error` with its log's tail; its process group stopped after the block."""

    def answers() -> bool:
        try:
            return bool(ready())
        except Exception:
            return False

    proc = spawn(argv, log=logs / f"{name}.log")
    try:
        deadline = time.monotonic() + timeout
        wait_started(name, answers, deadline, children={name: proc}, logs=logs, error=error)
        yield proc
    finally:
        stop_group(proc, grace=10)


def temp_root(prefix: str) -> Path:
    """A new temp folder owned by this process; removes stale ones left by dead owners.

    A process killed outright (SIGKILL, or SIGTERM without a handler) cannot remove its
    folder; the next harness run on the machine does, once the owner is gone.
    """
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{prefix}*"):
        with contextlib.suppress(OSError, ValueError):
            owner = int((old / ".owner-pid").read_text())
            if not Path(f"/proc/{owner}").exists():
                shutil.rmtree(old, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    (root / ".owner-pid").write_text(str(os.getpid()))
    return root


def source_path(*extra: str) -> str:
    """A PYTHONPATH for a child Python that runs this checkout's sources (runtime,
    contract, the repository root for devcluster's test models) before anything
    installed, then what this process was given."""
    repo = Path(__file__).resolve().parents[1]
    parts = [str(repo / "runtime"), str(repo / "contract"), str(repo), *extra]
    given = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*parts, given] if given else parts)
