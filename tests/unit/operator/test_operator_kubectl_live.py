"""live.follow: the status redrawn only when it changes; escape sequences only on a
terminal."""

from __future__ import annotations

import io

from hotswap_operator.kubectl import live


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def reader(*texts: str):
    queue = list(texts)
    return lambda: queue.pop(0)


def test_a_pipe_gets_each_new_status_once_as_plain_lines():
    out = io.StringIO()
    live.follow(reader("rev 1", "rev 1", "rev 2"), out, 0, "header", rounds=3)
    assert out.getvalue() == "rev 1\n\nrev 2\n"  # no header, no escape sequence


def test_a_terminal_is_cleared_and_redrawn_under_the_header():
    out = Terminal()
    live.follow(reader("rev 1", "rev 1", "rev 2"), out, 0, "Every 2s: status", rounds=3)
    frames = out.getvalue().split(live.CLEAR)
    assert frames == ["", "Every 2s: status\n\nrev 1\n", "Every 2s: status\n\nrev 2\n"]
