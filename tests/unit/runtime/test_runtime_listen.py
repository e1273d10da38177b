"""serving/listen.py: which addresses the serving ports listen on, and how they bind."""

from __future__ import annotations

import socket

import pytest

from hotswap_runtime.serving.listen import (
    LOOPBACK,
    bind_sockets,
    covers_loopback,
    grpc_address,
    listen_hosts,
)
from hotswap_runtime.settings import load_settings


@pytest.mark.parametrize(
    "host", ["10.0.0.7", "fd00::7", "[fd00::7]", "runtime.example", "127.0.0.2", "::1", "::"]
)
def test_a_pod_ip_name_or_other_loopback_gets_127_0_0_1_too(host: str) -> None:
    assert listen_hosts(host, loopback=True) == (host, LOOPBACK)
    assert listen_hosts(host, loopback=False) == (host,)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost", "0.0.0.0"])
def test_an_address_that_covers_loopback_is_listened_on_alone(host: str) -> None:
    assert covers_loopback(host)
    assert listen_hosts(host, loopback=True) == (host,)


@pytest.mark.parametrize(
    ("host", "address"),
    [("10.0.0.7", "10.0.0.7:81"), ("fd00::7", "[fd00::7]:81"), ("[fd00::7]", "[fd00::7]:81")],
)
def test_grpc_addresses_bracket_ipv6(host: str, address: str) -> None:
    assert grpc_address(host, 81) == address


def test_loopback_is_on_unless_turned_off() -> None:
    assert load_settings([], {"HOTSWAP_MODEL_NAME": "m"}).loopback
    for off in ("false", "0", "no", "OFF"):
        env = {"HOTSWAP_MODEL_NAME": "m", "HOTSWAP_LOOPBACK": off}
        assert not load_settings([], env).loopback
    assert not load_settings(["--no-loopback"], {"HOTSWAP_MODEL_NAME": "m"}).loopback


def test_port_zero_binds_every_address_on_the_first_ones_port() -> None:
    sockets = bind_sockets(("127.0.0.2", LOOPBACK), 0)
    try:
        names = [s.getsockname() for s in sockets]
        assert [n[0] for n in names] == ["127.0.0.2", LOOPBACK]
        assert names[0][1] == names[1][1] != 0
    finally:
        for s in sockets:
            s.close()


def test_an_address_listed_twice_is_bound_once() -> None:
    sockets = bind_sockets((LOOPBACK, LOOPBACK), 0)
    try:
        assert len(sockets) == 1
    finally:
        for s in sockets:
            s.close()


def test_a_taken_port_names_the_address_and_leaves_nothing_bound() -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"cannot listen on {LOOPBACK} port {port}"):
            bind_sockets(("127.0.0.2", LOOPBACK), port)
        with socket.socket() as again:  # the first address's socket was closed
            again.bind(("127.0.0.2", port))
