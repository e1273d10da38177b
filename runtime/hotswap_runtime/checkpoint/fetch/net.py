"""Where a fetch may connect: one DNS answer, checked, and the addresses it yields.

A fetch resolves a host once, checks every address with ``policy.address_refusal``
and connects only to the addresses that passed, so a DNS answer that changes between
the check and the connection (rebinding) cannot lead anywhere the check refused. The
timeouts that bound each wait of a fetch live here too: connecting has its own bound,
reading has an idle bound per read and none per file.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from hotswap_contract.policy import IpNetwork, address_refusal, parse_networks
from hotswap_runtime.errors import FetchError, FetchRefused

CONNECT_SECONDS = 10.0  # resolving and connecting, unless the idle bound is shorter


@dataclass(frozen=True)
class NetPolicy:
    """The addresses fetches may reach beyond the defaults, and how long they wait."""

    allowed: tuple[IpNetwork, ...] = ()
    idle_seconds: float = 30.0
    proxy: str | None = None  # the admin's HTTP proxy for http(s) and s3 (a P2P daemon)

    @classmethod
    def of(
        cls, allowed_networks: Sequence[str], idle_seconds: float, proxy: str | None = None
    ) -> NetPolicy:
        return cls(parse_networks(allowed_networks), idle_seconds, proxy or None)

    @property
    def connect_seconds(self) -> float:
        return min(CONNECT_SECONDS, self.idle_seconds)


def stalled(shown: str, policy: NetPolicy) -> FetchError:
    """The reason for a fetch that received nothing for the idle bound."""
    return FetchError(
        f"cannot fetch checkpoint {shown}: no bytes arrived for {policy.idle_seconds:g} s "
        "(HOTSWAP_FETCH_IDLE_SECONDS); the server stalled, the revision is retried later"
    )


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order, without repeats."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def allowed_addresses(
    host: str, port: int, policy: NetPolicy, redirect: bool, shown: str, where: str = ""
) -> list[str]:
    """The addresses of ``host`` a fetch may connect to, or FetchRefused with the reason
    for the first one refused when none may be; FetchError when ``host`` does not
    resolve. Connect only to what this returns: never resolve the name again. ``where``
    names the host in reasons when it is not the checkpoint URI's own."""
    prefix = f"cannot fetch checkpoint {shown}: {where + ': ' if where else ''}"
    try:
        async with asyncio.timeout(policy.connect_seconds):
            addresses = await resolve(host, port)
    except TimeoutError:
        raise FetchError(
            f"{prefix}resolving the host took over {policy.connect_seconds:g} s"
        ) from None
    except OSError as exc:
        raise FetchError(
            f"{prefix}the host does not resolve ({type(exc).__name__}); check the URI"
        ) from None
    refusals = [address_refusal(address, policy.allowed, redirect) for address in addresses]
    allowed = [address for address, refusal in zip(addresses, refusals, strict=True) if not refusal]
    if not allowed:
        reason = next((r for r in refusals if r), "its host has no address")
        raise FetchRefused(prefix + reason)
    return allowed
