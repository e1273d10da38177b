"""Start ``python -m hotswap_runtime`` as a real process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devcluster.procs import source_path

from . import hostile

REPO = Path(__file__).resolve().parents[2]


def status_kib(pid: int, field: str) -> int:
    """A field of ``/proc/<pid>/status`` in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def publish_tiny(root: Path) -> str:
    """Revision 1 of the tiny model saved and published under ``root``; the config
    folder for ``HOTSWAP_CONFIG_DIR``."""
    from devcluster import checkpoints as ck
    from devcluster import tiny

    sha = ck.save(tiny.weights(1), root / "a.safetensors")
    ck.publish(root / "config", ck.config(1, ck.revision(1, f"file://{root}/a.safetensors", sha)))
    return str(root / "config")


def reset_peak(pid: int) -> None:
    """Set process ``pid``'s peak RSS (VmHWM) to its RSS now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError):
            last = condition()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class RuntimeProcess:
    process: subprocess.Popen[bytes]
    url: str
    model: str
    log_path: Path
    grpc_target: str = ""  # host:port of the gRPC service

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def metadata(self) -> dict[str, Any]:
        response = self.get(f"/v2/models/{self.model}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> str:
        return self.get("/metrics").text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_version(self, version: int, timeout: float = 30) -> dict[str, Any]:
        result: dict[str, Any] = wait_for(
            lambda: (m := self.metadata())["model_version"] == str(version) and m,
            timeout,
            f"model_version {version}",
        )
        return result

    def wait_failure(self, revision: int, timeout: float = 30) -> dict[str, Any]:
        def failed() -> Any:
            meta = self.metadata()
            failure = meta.get("last_failure") or {}
            return failure.get("revision") == revision and failure

        result: dict[str, Any] = wait_for(failed, timeout, f"failure of revision {revision}")
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_runtime(
    workdir: Path,
    env: dict[str, str],
    model: str = "tiny",
    port: int | None = None,
    ready: bool = True,
) -> RuntimeProcess:
    """Run the runtime with ``env`` added; wait until it answers (and is ready)."""
    port = port or free_port()
    grpc_port = int(env.get("HOTSWAP_GRPC_PORT") or free_port())
    log_path = workdir / f"runtime-{port}-{time.time_ns()}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": source_path(),
        "HOTSWAP_MODEL_NAME": model,
        "HOTSWAP_HOST": "127.0.0.1",
        "HOTSWAP_PORT": str(port),
        "HOTSWAP_GRPC_PORT": str(grpc_port),
        "HOTSWAP_CACHE_DIR": str(workdir / "cache"),
        "HOTSWAP_DEVICE": os.environ.get("HOTSWAP_TEST_DEVICE", "cpu"),
        "HOTSWAP_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "HOTSWAP_ALLOWED_ARCHITECTURES": ",".join(hostile.ALLOWED),
        # Tests keep checkpoints in their work folder and serve them on 127.0.0.1.
        "HOTSWAP_FILE_ROOTS": str(workdir),
        "HOTSWAP_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
        **env,
    }
    for var in ("POD_NAME", "POD_NAMESPACE", "KUBECONFIG"):
        if var not in env:
            full_env.pop(var, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hotswap_runtime"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    host = full_env["HOTSWAP_HOST"]
    base, grpc = f"http://{host}:{port}", f"{host}:{grpc_port}"
    runtime = RuntimeProcess(process, base, model, log_path, grpc)
    path = "/v2/health/ready" if ready else "/v2/health/live"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"runtime exited with {process.returncode}:\n{runtime.log()}")
        return runtime.get(path).status_code == 200

    try:
        wait_for(up, 60, f"runtime on port {port} to answer {path}", interval=0.05)
    except BaseException:
        runtime.stop()
        raise
    return runtime


@contextlib.contextmanager
def running(workdir: Path, env: dict[str, str], **kw: Any) -> Iterator[RuntimeProcess]:
    runtime = start_runtime(workdir, env, **kw)
    try:
        yield runtime
    finally:
        runtime.stop()
