"""Readiness, liveness and startup probes, run by the local kubelet against the pod IP."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Mapping
from typing import Any

JSON = dict[str, Any]


def _port(value: int | str, container: JSON) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports", []):
        if port.get("name") == value:
            return int(port["containerPort"])
    raise ValueError(f"container {container['name']!r} has no port named {value!r}")


def _http(spec: JSON, host: str, port: int, timeout: float) -> bool:
    scheme = spec.get("scheme", "HTTP").upper()
    conn: http.client.HTTPConnection
    if scheme == "HTTPS":
        ctx = ssl._create_unverified_context()  # the kubelet does not verify probe certs
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {h["name"]: h["value"] for h in spec.get("httpHeaders", [])}
    try:
        conn.request("GET", spec.get("path", "/") or "/", headers=headers)
        return 200 <= conn.getresponse().status < 400
    finally:
        conn.close()


def check(
    probe: JSON, container: JSON, pod_ip: str, env: Mapping[str, str], argv: list[str] | None
) -> bool:
    """Run one probe once: True on success. `argv` is the exec command, already made local."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            spec = probe["httpGet"]
            return _http(spec, spec.get("host") or pod_ip, _port(spec["port"], container), timeout)
        if "tcpSocket" in probe:
            spec = probe["tcpSocket"]
            addr = (spec.get("host") or pod_ip, _port(spec["port"], container))
            with socket.create_connection(addr, timeout=timeout):
                return True
        if "exec" in probe and argv:
            done = subprocess.run(argv, env=dict(env), capture_output=True, timeout=timeout)
            return done.returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    return False


class ProbeState:
    """Thresholds and timing of one probe of one running container."""

    def __init__(self, probe: JSON, started: float, initial: bool) -> None:
        self.probe = probe
        self.result = initial
        self._next = started + float(probe.get("initialDelaySeconds", 0))
        self._period = float(probe.get("periodSeconds", 10))
        self._ok = int(probe.get("successThreshold", 1))
        self._fail = int(probe.get("failureThreshold", 3))
        self._streak = 0  # >0: consecutive successes, <0: consecutive failures

    @property
    def failed(self) -> bool:
        """failureThreshold consecutive failures: act on it (kill, for startup/liveness)."""
        return -self._streak >= self._fail

    def due(self, now: float) -> bool:
        return now >= self._next

    def record(self, ok: bool, now: float) -> bool:
        """Count one probe result; return the (possibly changed) overall result."""
        self._next = now + self._period
        self._streak = (max(self._streak, 0) + 1) if ok else (min(self._streak, 0) - 1)
        if self._streak >= self._ok:
            self.result = True
        elif -self._streak >= self._fail:
            self.result = False
        return self.result

    def wait_hint(self, now: float) -> float:
        return max(0.0, self._next - now)
