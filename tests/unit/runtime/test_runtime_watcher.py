"""model.json is read off the event loop, bounded, and only from a regular file."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from devcluster import checkpoints as ck
from hotswap_contract.wire import CONFIG_KEY, MAX_CONFIG_BYTES, ConfigError, parse_config
from hotswap_runtime.control.watcher import FileWatcher, read_bounded


class Sink:
    """Stands in for the Reconciler: records what the watcher hands it."""

    def __init__(self) -> None:
        self.offers: list[int] = []
        self.errors: list[str] = []

    def offer(self, revision, generation, source) -> None:
        self.offers.append(generation)

    def config_error(self, reason: str, source: str) -> None:
        self.errors.append(reason)


def good_config(generation: int = 1) -> str:
    return ck.config(generation, ck.revision(1, "file:///models/a.safetensors", "a" * 64))


def test_read_bounded_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    regular = tmp_path / "regular.json"
    regular.write_text("{}")
    assert read_bounded(regular, 10) == b"{}"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b" " * 11)
    for path, why in (
        (fifo, "not a regular file"),
        (zero, "not a regular file"),
        (big, "11 bytes"),
    ):
        started = time.monotonic()
        with pytest.raises(ConfigError, match=why):
            read_bounded(path, 10)
        assert time.monotonic() - started < 1


def test_parse_config_bounds_size_and_echoes_no_values() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        parse_config(" " * (MAX_CONFIG_BYTES + 1))
    secret = "s3cr3t-" * 20
    text = good_config().replace('"a' + "a" * 63 + '"', f'"{secret}"')
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert secret not in str(caught.value) and "sha256" in str(caught.value)


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_a_hostile_model_json_is_a_config_error(tmp_path: Path, kind: str) -> None:
    config_dir = tmp_path / "config"
    ck.publish(config_dir, good_config())
    link = config_dir / CONFIG_KEY
    link.unlink()
    if kind == "dev-zero":
        link.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(link)
    else:
        link.write_text(good_config()[:-1] + " " * (2 * MAX_CONFIG_BYTES) + "}")
    sink = Sink()
    watcher = FileWatcher(config_dir, sink, "pod-a", resync_seconds=60)  # type: ignore[arg-type]

    started = time.monotonic()
    asyncio.run(watcher.read())
    took = time.monotonic() - started
    assert took < 1 and sink.offers == []
    assert len(sink.errors) == 1 and CONFIG_KEY in sink.errors[0]
    watcher.read_once()  # the same bad document again: reported once only
    assert len(sink.errors) == 1
    link.unlink()
    link.write_text(good_config(2))
    watcher.read_once()
    assert sink.offers == [2]


class OneWatchCore:
    """CoreV1Api's list call: a list answer, then a watch that records its arguments and
    ends the attempt."""

    class EndedError(Exception):
        pass

    def __init__(self) -> None:
        self.watches: list[dict] = []

    def list_namespaced_config_map(self, namespace, **kwargs):
        from types import SimpleNamespace

        if kwargs.get("watch"):
            self.watches.append(kwargs)
            raise self.EndedError
        return SimpleNamespace(items=[], metadata=SimpleNamespace(resource_version="7"))


def test_api_watches_end_at_spread_times_so_pods_started_together_do_not_reconnect_together():
    from hotswap_runtime.control.watcher import WATCH_TIMEOUT_SECONDS, ApiWatcher

    watcher = ApiWatcher(None, "ml", "resnet-model", Sink(), "resnet-a")  # type: ignore[arg-type]
    core = OneWatchCore()
    for _ in range(40):
        with pytest.raises(OneWatchCore.EndedError):
            watcher._watch_once(core)
    timeouts = [w["timeout_seconds"] for w in core.watches]
    assert all(w["resource_version"] == "7" for w in core.watches)
    low, high = WATCH_TIMEOUT_SECONDS
    assert low >= 300 and all(low <= t <= high for t in timeouts)
    assert len(set(timeouts)) > 20, timeouts  # spread, not one value for every pod
