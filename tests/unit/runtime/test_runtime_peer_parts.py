"""Peer transfer's small parts: settings, the peer list's reading, the credential file,
where a file is read from (origins, rotation), and the tally a pod reports."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hotswap_contract.wire import ConfigError, Peer, Peers, parse_peers
from hotswap_runtime.checkpoint.peers.peering import Tally, _Plan
from hotswap_runtime.checkpoint.peers.roster import MAX_TOKEN_BYTES, Roster, read_token
from hotswap_runtime.settings import load_settings

ENV = {"HOTSWAP_MODEL_NAME": "m"}


def roster(names: list[str], origins: int) -> Peers:
    peers = tuple(Peer(name=n, ip=f"10.0.0.{i + 1}") for i, n in enumerate(names))
    return Peers(name="m", generation=1, originConcurrency=origins, peers=peers)


def test_peer_settings_come_from_the_environment_and_are_checked() -> None:
    s = load_settings(
        [],
        {
            **ENV,
            "HOTSWAP_PEER_TOKEN_FILE": "/var/run/hotswap/peer/token",
            "HOTSWAP_PEERS_CONFIGMAP": "m-peers",
            "HOTSWAP_PEER_MAX_UPLOADS": "2",
            "HOTSWAP_FETCH_PROXY": "http://127.0.0.1:65001",
        },
    )
    assert s.peer_token_file == Path("/var/run/hotswap/peer/token")
    assert (s.peers_configmap, s.peer_port, s.peer_max_uploads) == ("m-peers", 8083, 2)
    assert s.fetch_proxy == "http://127.0.0.1:65001"
    assert load_settings([], ENV).peer_token_file is None  # no credential: no peers
    for bad in ({"HOTSWAP_PEER_PORT": "0"}, {"HOTSWAP_PEER_MAX_UPLOADS": "0"}):
        with pytest.raises(SystemExit, match="HOTSWAP_PEER"):
            load_settings([], {**ENV, **bad})
    for proxy in ("socks5://p:1080", "http://", "http://p:3128/path", "p:3128"):
        with pytest.raises(SystemExit, match="HOTSWAP_FETCH_PROXY"):
            load_settings([], {**ENV, "HOTSWAP_FETCH_PROXY": proxy})


def test_a_peer_list_names_pods_and_addresses_only() -> None:
    doc = roster(["a", "b"], 1).dumps()
    assert parse_peers(doc).origins == ("a",)
    for hostile in (
        doc.replace("10.0.0.1", "evil.example"),  # a name would be resolved: refused
        doc.replace('"a"', '"A_B"'),
        doc.replace('"originConcurrency": 1', '"originConcurrency": 0'),
        doc.replace('"generation": 1', '"generation": 1, "extra": 1'),
        "[" * 100_000,
        "x" * (2 << 20),
    ):
        with pytest.raises(ConfigError) as refused:
            parse_peers(hostile)
        assert "evil" not in str(refused.value)


def test_the_roster_reads_at_most_once_per_ttl_and_a_bad_list_means_no_peers() -> None:
    reads: list[int] = []
    text = {"now": roster(["a"], 1).dumps()}

    def read() -> str | None:
        reads.append(1)
        return text["now"]

    cached = Roster(read, ttl=3600)
    assert cached() is not None and cached() is not None
    assert len(reads) == 1
    text["now"] = "not json"
    assert Roster(read, ttl=0)() is None

    def broken() -> str | None:
        raise ConnectionError("API down")

    assert Roster(broken)() is None


def test_the_credential_file_is_bounded_and_must_hold_a_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret-token\n")
    assert read_token(path) == "s3cret-token"
    for bad in ("", "\n", "a" * (MAX_TOKEN_BYTES + 1), "two\nlines"):
        path.write_text(bad)
        with pytest.raises(ValueError):
            read_token(path)


def test_origins_split_the_files_and_each_file_has_one_reader_first() -> None:
    peers = roster([f"pod-{i}" for i in range(10)], 3)
    firsts = set()
    for n in range(60):
        sha = hashlib.sha256(str(n).encode()).hexdigest()
        plan = _Plan.of(peers, "pod-7", 8082, sha)
        assert sorted(p.name for p in plan.origins) == ["pod-0", "pod-1", "pod-2"]
        assert {p.name for p in plan.others} == {f"pod-{i}" for i in range(3, 10)} - {"pod-7"}
        firsts.add(plan.origins[0].name)
        assert plan.origins[0].name == f"pod-{int(sha[:16], 16) % 3}"
    assert firsts == {"pod-0", "pod-1", "pod-2"}  # every origin reads some files
    other = _Plan.of(peers, "pod-8", 8082, "a" * 64)
    mine = _Plan.of(peers, "pod-7", 8082, "a" * 64)
    assert [p.name for p in other.others] != [p.name for p in mine.others]  # spread


def test_the_tally_reports_bytes_by_source_and_distinct_peers() -> None:
    tally = Tally()
    tally.add("store", 10)
    tally.add("cache", 5)
    tally.add("pod-1", 7)
    tally.add("pod-1", 3)
    tally.add("pod-2", 1)
    tally.failed()
    figures = tally.figures()
    assert (figures.store_bytes, figures.cached_bytes, figures.peer_bytes) == (10, 5, 11)
    assert (figures.peers, figures.peer_failures) == (2, 1)
