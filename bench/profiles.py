"""Where a benchmarked server spends its CPU: py-spy stack samples over a measured
window, summed by thread and by the frame that was running (``--profile DIR``).

py-spy (``pip install py-spy``; not in the test extra) samples the process 100 times a
second without pausing it (``--nonblocking``: native unwinding, which pauses it, cut
the measured throughput 5x). Frames are Python's, so time inside torch, grpc-core or
protobuf counts under the Python function that called into them. Idle threads are not
sampled: shares are of the busy samples.
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RATE = 100
TOP = 12
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<where>[^()]*)\)$")


@contextlib.contextmanager
def profiled(
    folder: str | None, pid: int | None, name: str, delay: float, seconds: float
) -> Iterator[dict[str, Any]]:
    """Sample ``pid`` for ``seconds`` from ``delay`` seconds on, into
    ``folder/name.txt``; on exit the yielded dict holds the summary (empty when
    ``folder`` or ``pid`` is None)."""
    summary: dict[str, Any] = {}
    if not folder or pid is None:
        yield summary
        return
    out = Path(folder) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [_py_spy(), "record", "--pid", str(pid), "--duration", str(round(seconds))]
    command += ["--rate", str(RATE), "--nonblocking", "--threads", "--format", "raw"]
    command += ["--output", str(out)]
    spies: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(
        delay, lambda: spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
    )
    timer.start()
    try:
        yield summary
    finally:
        timer.join()
        for spy in spies:
            spy.wait(seconds + 30)
    if out.exists():
        summary.update(summarize(out.read_text()))


def summarize(text: str) -> dict[str, Any]:
    """Busy samples by thread and by running frame (its function and file), shares of
    all busy samples, the largest first."""
    threads: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        head, _, stack = match["stack"].partition(";")  # "thread (tid): name;frame;..."
        count = int(match["count"])
        threads[re.sub(r"[-_ ]?\d+$", "", head.split(": ", 1)[-1])] += count
        frames[_frame(stack.rsplit(";", 1)[-1])] += count
    total = sum(threads.values()) or 1
    return {
        "busy_samples": total,
        "threads": {k: round(v / total, 3) for k, v in threads.most_common(TOP)},
        "self": {k: round(v / total, 3) for k, v in frames.most_common(TOP)},
    }


def _frame(text: str) -> str:
    match = _FRAME.match(text)
    if not match:
        return text
    where = match["where"].rsplit(":", 1)[0]
    return f"{match['function']} ({Path(where).name})"


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found
