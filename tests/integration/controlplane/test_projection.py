"""The local kubelet's building blocks that need no cluster: atomic projection, env
expansion, mount-path rewriting, image matching, loopback IPs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from devcluster.images import ImageTable, repository
from devcluster.ipam import LoopbackIPs
from devcluster.podenv import ConfigError, MountMap, container_env, expand, quantity
from devcluster.projection import DATA, current, write_atomic


def read_consistent(volume: Path) -> tuple[str, str]:
    """Read keys a and b from one resolved version (retry if it vanished meanwhile)."""
    while True:
        version = volume / (volume / DATA).readlink()
        try:
            return (version / "a").read_text(), (version / "b").read_text()
        except FileNotFoundError:
            continue


def test_atomic_writer_layout(tmp_path: Path) -> None:
    assert write_atomic(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    data = (tmp_path / DATA).readlink()
    assert str(data).startswith("..20") and (tmp_path / str(data)).is_dir()
    assert (tmp_path / "a").readlink() == Path("..data/a")
    assert (tmp_path / "dir" / "b").read_text() == "2"
    assert ((tmp_path / "dir" / "b").stat().st_mode & 0o777) == 0o600
    assert not write_atomic(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})

    assert write_atomic(tmp_path, {"c": (b"3", 0o644)})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([DATA, "c", str((tmp_path / DATA).readlink())])
    assert current(tmp_path) == {"c": (b"3", 0o644)}


def test_reader_never_sees_a_mixed_version(tmp_path: Path) -> None:
    write_atomic(tmp_path, {"a": (b"v0", 0o644), "b": (b"v0", 0o644)})
    seen: list[tuple[str, str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(read_consistent(tmp_path))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(1, 200):
        value = f"v{i}".encode() * (i % 7 + 1)
        write_atomic(tmp_path, {"a": (value, 0o644), "b": (value, 0o644)})
    stop.set()
    thread.join()
    assert len(seen) > 10
    mixed = [pair for pair in seen if pair[0] != pair[1]]
    assert not mixed, f"reader saw mixed versions: {mixed[:3]}"
    assert len({a for a, _ in seen}) > 2  # it did see several versions


def test_env_expansion_and_refs() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
        "spec": {"nodeName": "n", "serviceAccountName": "sa"},
    }
    objects = {
        ("configmaps", "cm"): {"data": {"k": "from-cm"}},
        ("secrets", "s"): {"data": {"k": "ZnJvbS1zZWNyZXQ="}},
    }
    container = {
        "name": "c",
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(IP):8080/$$(IP)"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "SEC", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        ],
    }
    env = container_env(
        pod,
        container,
        pod_ip="127.0.0.9",
        host_ip="127.0.0.1",
        lookup=lambda kind, name: objects.get((kind, name)),
        allocatable={},
    )
    assert env == {
        "IP": "127.0.0.9",
        "URL": "http://127.0.0.9:8080/$(IP)",
        "APP": "x",
        "CM": "from-cm",
        "SEC": "from-secret",
        "SA": "sa",
    }
    missing = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}],
    }
    with pytest.raises(ConfigError, match="nope"):
        container_env(pod, missing, pod_ip="", host_ip="", lookup=lambda k, n: None, allocatable={})
    assert expand("$(A)-$(B)", {"A": "1"}) == "1-$(B)"
    assert quantity("500m") * 2 == 1 and quantity("1Gi") == 2**30


def test_mount_paths_are_rewritten() -> None:
    mounts = MountMap({"/etc/model": "/tmp/p/volumes/model", "/etc/model/extra": "/tmp/x"})
    assert mounts.rewrite("/etc/model/model.json") == "/tmp/p/volumes/model/model.json"
    assert mounts.rewrite("/etc/model") == "/tmp/p/volumes/model"
    assert mounts.rewrite("/etc/model/extra/f") == "/tmp/x/f"
    assert mounts.rewrite("--config=/etc/model/a") == "--config=/tmp/p/volumes/model/a"
    assert mounts.rewrite("/etc/modelx") == "/etc/modelx"
    assert mounts.rewrite("relative/etc/model") == "relative/etc/model"


def test_image_table() -> None:
    assert (
        repository("ghcr.io/acme/hotswap-runtime:1.2@sha256:ab") == "ghcr.io/acme/hotswap-runtime"
    )
    assert repository("localhost:5000/x") == "localhost:5000/x"
    table = ImageTable({"example/http": ["python3", "-m", "http.server"]})
    runtime = table.resolve("ghcr.io/acme/hotswap-runtime:dev")
    assert runtime is not None and runtime.argv[1:] == ("-m", "hotswap_runtime")
    assert table.resolve("example/http:1") is not None
    assert table.resolve("acme/not-hotswap-runtimes") is None
    assert table.resolve("nginx:1.27") is None


def test_loopback_ips_are_unique_across_allocators(tmp_path: Path) -> None:
    first, second = LoopbackIPs(tmp_path), LoopbackIPs(tmp_path)
    a, b = first.allocate(), second.allocate()
    assert a == "127.0.0.2" and b == "127.0.0.3"
    first.release(a)
    assert second.allocate() == "127.0.0.2"
