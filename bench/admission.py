"""Micro-benchmark: what admission to the request memory costs a REST request.

Times, on one event loop, a small REST body (one ASGI message of ``--body`` bytes)
received the way ``rest.py`` receives it: a claim on the budget, ``BodyClock.receive``
(the fixed charge, the body's clock, the chunk's charge) and the charge of
the rest; against the same body read into a bytearray with no budget at all. Both run
with ``--open`` other claims open (slow senders that hold their fixed charge), which
is where the banker's rule has to look at older claims.

    PYTHONPATH=contract:operator:runtime:. .venv/bin/python bench/admission.py

Prints one JSON object: microseconds per request for each, and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import MutableMapping
from typing import Any

from hotswap_runtime.budget import RECEIVE_FIXED, MemoryBudget, decode_cost
from hotswap_runtime.serving.body import BodyClock, BodyLimits


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--body", type=int, default=200)
    parser.add_argument("--open", type=int, default=0, help="other claims held open")
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args()


def receiver(body: bytes) -> Any:
    message: MutableMapping[str, Any] = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> MutableMapping[str, Any]:
        return message

    return receive


async def bare(n: int, body: bytes) -> float:
    receive = receiver(body)
    start = time.perf_counter()
    for _ in range(n):
        got = bytearray()
        message = await receive()
        got += message["body"]
    return time.perf_counter() - start


async def admitted(n: int, body: bytes, budget: MemoryBudget) -> float:
    receive = receiver(body)
    bodies = BodyClock(BodyLimits(256 << 20))
    cost = decode_cost(len(body), None)
    start = time.perf_counter()
    for _ in range(n):
        async with budget.claim(cost) as claim:
            await bodies.receive(receive, claim, len(body), "bench")
            await claim.take_rest()
    return time.perf_counter() - start


async def main() -> None:
    args = parse()
    budget = MemoryBudget(1 << 30)
    slow = [budget.claim(decode_cost(256 << 20, None)) for _ in range(args.open)]
    for claim in slow:
        assert claim.take_now(RECEIVE_FIXED)
    body = b"x" * args.body
    best_bare = min([await bare(args.requests, body) for _ in range(args.repeats)])
    best = min([await admitted(args.requests, body, budget) for _ in range(args.repeats)])
    per = 1e6 / args.requests
    print(
        json.dumps(
            {
                "open_claims": args.open,
                "bare_us": round(best_bare * per, 2),
                "admitted_us": round(best * per, 2),
                "overhead_us": round((best - best_bare) * per, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
