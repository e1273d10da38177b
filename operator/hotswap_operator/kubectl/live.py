"""`kubectl hotswap status --watch`: the status redrawn in place whenever it changes.

On a terminal the screen is cleared and the whole status drawn again (as watch(1) does),
so the revision, the pods' states and their swap phases stay where the eye expects them;
elsewhere (a pipe, a file, CI logs) each new status is printed after a blank line, with
no escape sequences. Ctrl-C ends it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen


def follow(
    read: Callable[[], str],
    out: TextIO,
    interval: float,
    header: str,
    rounds: int | None = None,
) -> None:
    """Call ``read`` every ``interval`` seconds and show what it returns when it
    changed; ``rounds`` bounds the reads (None: until interrupted)."""
    terminal = out.isatty()
    shown: str | None = None
    done = 0
    while rounds is None or done < rounds:
        text = read()
        if text != shown:
            out.write(_frame(text, header, terminal, first=shown is None))
            out.flush()
            shown = text
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval)


def _frame(text: str, header: str, terminal: bool, first: bool) -> str:
    if terminal:
        return f"{CLEAR}{header}\n\n{text}\n"
    return f"{text}\n" if first else f"\n{text}\n"
