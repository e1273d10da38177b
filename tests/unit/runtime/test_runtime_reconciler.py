"""The swap worker cannot die, remembers failures in a bounded map, and a revision that
killed the process is refused after the restart while the previous one serves again."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from devcluster import checkpoints as ck
from devcluster import tiny
from hotswap_contract.wire import PodState, Revision
from hotswap_runtime.checkpoint.store import CheckpointStore
from hotswap_runtime.control.desired import KEEP_FAILURES, Failure, Reconciler, SwapRecord
from hotswap_runtime.control.journal import FILE, LoadJournal
from hotswap_runtime.swap.swapper import Swapper
from tests.fixtures_runtime.server import wait_for


class Recorder:
    def __init__(self) -> None:
        self.records: list[SwapRecord] = []

    def swap_finished(self, record: SwapRecord) -> None:
        self.records.append(record)

    def config_rejected(self, failure: Failure) -> None:
        return None

    def status_changed(self, status: object) -> None:
        return None


class Exploding(Recorder):
    """An observer with a bug: every call raises."""

    def swap_finished(self, record: SwapRecord) -> None:
        raise RuntimeError("observer bug")

    def status_changed(self, status: object) -> None:
        raise RuntimeError("observer bug")


def revision(root: Path, number: int, seed: int, architecture: str = tiny.ARCHITECTURE) -> Revision:
    path = root / f"r{number}-{seed}.safetensors"
    sha = ck.save(tiny.weights(seed), path)
    raw = ck.revision(number, f"file://{path}", sha, architecture=architecture)
    return Revision.model_validate(raw)


def swapper_in(root: Path) -> Swapper:
    torch.set_num_threads(1)
    store = CheckpointStore(root / "cache", 10**8, 10**8, file_roots=(str(root),))
    return Swapper(store, torch.device("cpu"), tiny.ALLOWED)


def serving(reconciler: Reconciler) -> int | None:
    current = reconciler.status().serving
    return None if current is None else current.revision.revision


def test_system_exit_from_a_load_is_a_failure_and_the_worker_lives_on(tmp_path: Path) -> None:
    swapper = swapper_in(tmp_path)
    seen = Recorder()
    reconciler = Reconciler(swapper, [Exploding(), seen])
    real_swap = swapper.swap_to
    bad = revision(tmp_path, 2, seed=2)

    def swap_to(rev: Revision, *args, **kwargs):  # a fault no real file can cause any more
        if rev.key == bad.key:
            raise SystemExit(3)
        return real_swap(rev, *args, **kwargs)

    swapper.swap_to = swap_to  # type: ignore[method-assign]
    reconciler.start()
    try:
        reconciler.offer(revision(tmp_path, 1, seed=1), 1, "file")
        wait_for(lambda: len(seen.records) == 1, 30, "revision 1 loaded")
        reconciler.offer(bad, 2, "file")
        wait_for(lambda: reconciler.status().state == PodState.FAILED, 30, "revision 2 failed")
        failure = reconciler.status().last_failure
        assert failure is not None and failure.code == "internal_error"
        assert "SystemExit" in failure.reason and serving(reconciler) == 1
        reconciler.offer(revision(tmp_path, 3, seed=3), 3, "file")
        wait_for(lambda: serving(reconciler) == 3, 30, "revision 3 after the SystemExit")
    finally:
        reconciler.stop()
    assert [r.result for r in seen.records] == ["ok", "failed", "ok"]


def test_failures_are_remembered_in_a_bounded_map(tmp_path: Path) -> None:
    swapper = swapper_in(tmp_path)
    seen = Recorder()
    reconciler = Reconciler(swapper, [seen])
    reconciler.start()
    try:
        reconciler.offer(revision(tmp_path, 1, seed=1), 1, "file")
        wait_for(lambda: serving(reconciler) == 1, 30, "revision 1 serving")
        for number in range(2, KEEP_FAILURES + 12):
            missing = Revision.model_validate(
                ck.revision(number, f"file://{tmp_path}/missing-{number}.safetensors", "a" * 64)
            )
            reconciler.offer(missing, number, "file")
            wait_for(lambda n=number: len(seen.records) == n, 30, f"attempt {number}")
    finally:
        reconciler.stop()
    assert len(reconciler._failures) == KEEP_FAILURES
    assert serving(reconciler) == 1


def test_a_revision_that_killed_the_process_is_refused_and_the_previous_serves(
    tmp_path: Path,
) -> None:
    good = revision(tmp_path, 1, seed=1, architecture=tiny.FRAGILE)
    crashing = revision(tmp_path, 2, seed=2, architecture=tiny.FRAGILE)
    first = Reconciler(swapper_in(tmp_path), [Recorder()], journal=LoadJournal(tmp_path / "cache"))
    first.start()
    try:
        first.offer(good, 1, "file")
        wait_for(lambda: serving(first) == 1, 30, "revision 1 serving")
    finally:
        first.stop()
    # The process dies while loading revision 2: all it leaves is the journal entry
    # written before the load (and the checkpoint cache).
    dying = LoadJournal(tmp_path / "cache")
    assert dying.recover().serving == good
    dying.loading(crashing)

    seen = Recorder()
    after = Reconciler(swapper_in(tmp_path), [seen], journal=LoadJournal(tmp_path / "cache"))
    after.start()
    try:
        after.offer(crashing, 2, "file")  # model.json still names the crashing revision
        wait_for(lambda: serving(after) == 1, 30, "the previous revision serving again")
        wait_for(lambda: seen.records and after.status().state != PodState.LOADING, 30, "settled")
        status = after.status()
        assert status.state == PodState.FAILED
        assert status.last_failure is not None and status.last_failure.code == "crashed"
        assert "crashed while loading revision 2" in status.last_failure.reason
        assert [r.revision.revision for r in seen.records] == [1]  # 2 never attempted
        after.offer(revision(tmp_path, 3, seed=3, architecture=tiny.FRAGILE), 3, "file")
        wait_for(lambda: serving(after) == 3, 30, "a new revision loads normally")
    finally:
        after.stop()
    journal = json.loads((tmp_path / "cache" / FILE).read_text())
    assert journal["loading"] is None and journal["serving"]["revision"] == 3
    assert [c["revision"] for c in journal["crashed"]] == [2]


def test_a_malformed_journal_is_ignored(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / FILE).write_text('{"loading": {"revision": "x"}}')
    assert LoadJournal(cache).recover().crashed == ()
    (cache / FILE).write_bytes(b"{" * (1 << 20))
    assert LoadJournal(cache).recover().crashed_now is None
