"""Peak memory of swaps, measured in a child process from /proc.

``measure_swaps`` starts ``python -m tests.fixtures_runtime.memory`` with a list of
revisions. The child builds a Swapper, runs the warm-up revisions (failures allowed:
a first refusal of a kind loads code once per process), then for each
measured one: collects garbage and trims the heap, reads VmRSS, resets the peak
(``echo 5 > /proc/self/clear_refs`` sets VmHWM to the current RSS), swaps, and reads
VmHWM (the peak during the swap) and, after another trim, VmRSS (what stayed). torch
allocates outside Python's allocator, so tracemalloc would see none of this.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20


@dataclass(frozen=True)
class Measured:
    name: str
    outcome: str  # "ok" or the exception's type and message
    peak: int  # bytes of RSS above the level before the swap, at the swap's peak
    kept: int  # bytes of RSS above that level after the swap (and a heap trim)


def measure_swaps(
    workdir: Path,
    warmup: list[dict[str, Any]],
    measured: list[tuple[str, dict[str, Any]]],
    swapper_args: dict[str, Any] | None = None,
    runtime_path: Path = REPO / "runtime",
    preload: tuple[str, ...] = (),
) -> list[Measured]:
    """Import ``preload``, swap to ``warmup`` revisions, then measure each of
    ``measured`` (revision JSON)."""
    job = {
        "cache": str(workdir / "memory-cache"),
        "preload": list(preload),
        "warmup": warmup,
        "measured": measured,
        "swapper": swapper_args or {},
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(runtime_path), str(REPO / "contract"), str(REPO)]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.fixtures_runtime.memory", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"memory child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [Measured(**item) for item in json.loads(done.stdout.strip().splitlines()[-1])]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _settle() -> None:
    from hotswap_runtime.devices import release_host_memory

    gc.collect()
    release_host_memory()


def main() -> None:
    import torch

    from devcluster import tiny
    from hotswap_contract.wire import Revision
    from hotswap_runtime.checkpoint.store import CheckpointStore
    from hotswap_runtime.errors import SwapError
    from hotswap_runtime.swap.swapper import Swapper

    torch.set_num_threads(1)
    job = json.loads(sys.argv[1])
    for module in job["preload"]:  # imports cost memory once per process, not per swap
        importlib.import_module(module)
    store = CheckpointStore(Path(job["cache"]), 1 << 40, 1 << 40, file_roots=("/",))
    swapper = Swapper(store, torch.device("cpu"), tiny.ALLOWED, **job["swapper"])
    for raw in job["warmup"]:  # refusals too: their first use loads code (meta kernels)
        with contextlib.suppress(SwapError):
            swapper.swap_to(Revision.model_validate(raw))
    results = []
    for name, raw in job["measured"]:
        revision = Revision.model_validate(raw)
        _settle()
        base = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        try:
            swapper.swap_to(revision)
            outcome = "ok"
        except BaseException as exc:  # the old runtime let SystemExit through
            outcome = f"{type(exc).__name__}: {str(exc)[:200]}"
        peak = _status("VmHWM") - base
        _settle()
        kept = _status("VmRSS") - base
        results.append({"name": name, "outcome": outcome, "peak": peak, "kept": kept})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
