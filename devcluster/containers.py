"""One container of a pod run as a local process: its state machine and its status."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from devcluster import procs
from devcluster.images import image_id
from devcluster.probes import ProbeState

JSON = dict[str, Any]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    """A container's process, state, restarts, backoff and probes."""

    spec: JSON
    backoff: float
    proc: subprocess.Popen[bytes] | None = None
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    container_id: str = ""
    done: bool = False  # terminated and will not be started again
    ready: bool = False
    started: bool = False  # startup probe passed (or none)
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    startup: ProbeState | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None

    def wait(self, reason: str, message: str) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}

    def mark_started(self, proc: subprocess.Popen[bytes], uid: str) -> None:
        now = time.monotonic()
        self.proc, self.started_at = proc, now
        self.container_id = f"local://{uid[:8]}-{self.name}-{self.restarts}-{proc.pid}"
        self.state = {"running": {"startedAt": now_rfc3339()}}
        spec = self.spec
        self.startup = _probe(spec.get("startupProbe"), now, False)
        self.readiness = _probe(spec.get("readinessProbe"), now, False)
        self.liveness = _probe(spec.get("livenessProbe"), now, True)
        self.started = self.startup is None
        self.ready = self.readiness is None and self.started

    def mark_exited(self, code: int) -> JSON:
        """Record the exit of the process; returns the terminated state."""
        started = self.state.get("running", {}).get("startedAt", now_rfc3339())
        if self.proc is not None:
            procs.stop_group(self.proc, 2.0)  # children it left behind
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now_rfc3339(),
            "containerID": self.container_id,
        }
        self.proc, self.ready, self.started = None, False, False
        self.state = {"terminated": terminated}
        return terminated

    def schedule_restart(self, cap: float) -> None:
        """Back off before the next start (reset after 10 minutes of running)."""
        now = time.monotonic()
        if now - self.started_at > 600:
            self.backoff = min(self.backoff, 10.0)
        self.last_state = self.state
        self.next_start = now + self.backoff
        self.wait(
            "CrashLoopBackOff",
            f"back-off {self.backoff:.1f}s restarting failed container={self.name}",
        )
        self.backoff = min(self.backoff * 2, cap)

    def status(self) -> JSON:
        out: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": image_id(self.spec.get("image", "")),
            "ready": self.ready,
            "started": self.running and self.started,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def _probe(spec: JSON | None, now: float, initial: bool) -> ProbeState | None:
    return ProbeState(spec, now, initial) if spec else None
