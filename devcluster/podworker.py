"""Runs one pod bound to the local kubelet: folders, volumes, token, processes, status."""

from __future__ import annotations

import os
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devcluster import procs
from devcluster.containers import ContainerRun, now_rfc3339
from devcluster.kubeconfig import write_kubeconfig
from devcluster.podenv import ConfigError, MountMap, container_env, expand
from devcluster.probes import check
from devcluster.projection import write_atomic
from devcluster.rest import ApiError, q
from devcluster.volumes import volume_payload

if TYPE_CHECKING:
    from devcluster.kubelet import LocalKubelet

JSON = dict[str, Any]
HOST_IP = "127.0.0.1"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_TICK = 0.2


class ImageError(Exception):
    """No local command for the image (reported as ErrImagePull)."""


class PodWorker(threading.Thread):
    """The kubelet's work for one pod, in one thread, from first sync to removal."""

    def __init__(self, kubelet: LocalKubelet, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.kubelet = kubelet
        self.pod = pod
        self.dir = kubelet.root / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.log_path = self.dir / "pod.log"
        self.log = procs.LogFile(self.log_path)
        self.ip: str | None = None
        self._wake = threading.Event()
        self._gone = False
        self._shutdown = False
        self._published: JSON | None = None
        self._start_time = now_rfc3339()
        self._tokens: dict[tuple[str | None, int], tuple[str, float]] = {}
        self._volumes_ready = False
        self._next_volume_sync = 0.0
        self._cache: dict[tuple[str, str], JSON | None] = {}
        backoff = kubelet.restart_backoff
        self.init_runs = [ContainerRun(c, backoff) for c in pod["spec"].get("initContainers", [])]
        self.runs = [ContainerRun(c, backoff) for c in pod["spec"]["containers"]]
        self.mounts = MountMap({})
        self._env_cache: dict[str, dict[str, str]] = {}  # per container, for exec probes

    # -- called from the kubelet's threads ------------------------------------------

    def update(self, pod: JSON) -> None:
        self.pod = pod
        self._wake.set()

    def gone(self) -> None:
        """The pod object was removed from the API (e.g. force-deleted)."""
        self._gone = True
        self._wake.set()

    def shutdown(self) -> None:
        """The kubelet stops: stop the processes, leave the pod object."""
        self._shutdown = True
        self._wake.set()

    def pid(self, container: str | None = None) -> int | None:
        for run in self.runs:
            if (container is None or run.name == container) and run.proc is not None:
                return run.proc.pid
        return None

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._setup()
            while not self._stopping():
                self._step()
                self._wake.wait(_TICK)
                self._wake.clear()
        except Exception:
            self.log.note(f"pod worker failed:\n{traceback.format_exc()}")
        finally:
            self._terminate()

    def _stopping(self) -> bool:
        deleting = "deletionTimestamp" in self.pod["metadata"]
        return self._gone or self._shutdown or deleting or self.kubelet.stopping

    def _setup(self) -> None:
        self.ip = self.kubelet.ips.allocate()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cwd").mkdir(exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        self.mounts = MountMap(self._mount_paths())
        self.log.note(f"pod {self.namespace}/{self.pod_name} uid {self.uid} got pod IP {self.ip}")

    def _step(self) -> None:
        now = time.monotonic()
        self._cache.clear()
        if not self._volumes_ready or now >= self._next_volume_sync or self._token_due(now):
            self._sync_volumes(now)
        if self._volumes_ready and all(self._step_container(r, True) for r in self.init_runs):
            for run in self.runs:
                self._step_container(run, init=False)
        self._publish()

    # -- volumes and token -----------------------------------------------------------

    def _volume_dir(self, name: str) -> Path:
        return self.dir / "volumes" / name

    def _mount_paths(self) -> dict[str, str]:
        """mountPath -> local folder, over all containers (one pod, one filesystem)."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        out: dict[str, str] = {}
        containers = [*self.pod["spec"].get("initContainers", []), *self.pod["spec"]["containers"]]
        for container in containers:
            for mount in container.get("volumeMounts", []):
                vol = volumes.get(mount["name"], {})
                base = (
                    Path(vol["hostPath"]["path"])
                    if "hostPath" in vol
                    else self._volume_dir(mount["name"])
                )
                if mount.get("subPath"):
                    base = base / mount["subPath"]
                out[mount["mountPath"]] = str(base)
        if self._automount():
            out.setdefault(SA_MOUNT, str(self.dir / "serviceaccount"))
        return out

    def _automount(self) -> bool:
        return self.pod["spec"].get("automountServiceAccountToken", True) is not False

    def _sync_volumes(self, now: float) -> None:
        try:
            for vol in self.pod["spec"].get("volumes", []):
                self._sync_volume(vol)
            if self._automount():
                self._write_service_account()
        except (ConfigError, ApiError, OSError) as err:
            if not self._volumes_ready:
                for run in self.runs:
                    run.wait("ContainerCreating", f"volumes not ready: {err}")
            self.log.note(f"volume sync: {err}")
            self._next_volume_sync = now + 1.0
            return
        self._volumes_ready = True
        self._next_volume_sync = now + self.kubelet.projection_delay()

    def _sync_volume(self, vol: JSON) -> None:
        target = self._volume_dir(vol["name"])
        payload = volume_payload(
            vol,
            pod=self.pod,
            pod_ip=self.ip or "",
            host_ip=HOST_IP,
            lookup=self._lookup,
            token=self._token,
        )
        if payload is not None:
            if write_atomic(target, payload):
                self.log.note(f"projected volume {vol['name']} ({len(payload)} files)")
        elif "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in vol:
            Path(vol["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ConfigError(f"volume {vol['name']!r}: type {kinds} is not supported locally")

    def _write_service_account(self) -> None:
        sa_dir = self.dir / "serviceaccount"
        files = {
            "token": (self._token(None, self.kubelet.token_seconds).encode(), 0o644),
            "ca.crt": (self.kubelet.ca_pem, 0o644),
            "namespace": (self.namespace.encode(), 0o644),
        }
        write_atomic(sa_dir, files)
        kubeconfig = self.dir / "kubeconfig"
        if not kubeconfig.exists():
            write_kubeconfig(
                kubeconfig,
                self.kubelet.server,
                sa_dir / "ca.crt",
                token_file=sa_dir / "token",
                namespace=self.namespace,
                user=self.pod["spec"].get("serviceAccountName", "default"),
            )

    def _token(self, audience: str | None, seconds: int) -> str:
        """A TokenRequest token bound to this pod, cached until 80% of its lifetime."""
        key = (audience, seconds)
        cached = self._tokens.get(key)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        sa = self.pod["spec"].get("serviceAccountName", "default")
        spec: JSON = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "uid": self.uid,
            },
        }
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{q(self.namespace)}/serviceaccounts/{q(sa)}/token"
        token = str(self.kubelet.client.post(path, body)["status"]["token"])
        self._tokens[key] = (token, time.monotonic() + 0.8 * seconds)
        return token

    def _token_due(self, now: float) -> bool:
        return any(now >= refresh for _, refresh in self._tokens.values())

    def _lookup(self, kind: str, name: str) -> JSON | None:
        key = (kind, name)
        if key not in self._cache:
            path = f"/api/v1/namespaces/{q(self.namespace)}/{kind}/{q(name)}"
            try:
                self._cache[key] = self.kubelet.client.get(path)
            except ApiError as err:
                if err.status != 404:
                    raise ConfigError(f"cannot read {kind[:-1]} {name!r}: {err}") from err
                self._cache[key] = None
        return self._cache[key]

    # -- containers ------------------------------------------------------------------

    def _step_container(self, run: ContainerRun, init: bool) -> bool:
        """Advance one container; for init containers, True once it has succeeded."""
        if run.proc is None:
            if not run.done and time.monotonic() >= run.next_start:
                self._start(run)
            return run.done and run.state.get("terminated", {}).get("exitCode") == 0
        code = run.proc.poll()
        if code is not None:
            self._exited(run, code, init)
            return run.done and code == 0
        if not init:
            self._probe(run)
        return False

    def _start(self, run: ContainerRun) -> None:
        try:
            argv, env, cwd = self._command(run.spec)
        except ImageError as err:
            run.wait("ErrImagePull", str(err))
            run.next_start = time.monotonic() + 5.0
            return
        except (ConfigError, ApiError) as err:
            run.wait("CreateContainerConfigError", str(err))
            run.next_start = time.monotonic() + 1.0
            return
        if run.last_state:  # every start after the first is a restart
            run.restarts += 1
        self.log.note(f"starting container {run.name}: {' '.join(argv)}")
        proc = procs.spawn(argv, log=self.log_path, env=env, cwd=cwd)
        run.mark_started(proc, self.uid)

    def _exited(self, run: ContainerRun, code: int, init: bool) -> None:
        run.mark_exited(code)
        self.log.note(f"container {run.name} exited with {code}")
        policy = self.pod["spec"].get("restartPolicy", "Always")
        restart = (policy == "Always" and not init) or (policy != "Never" and code != 0)
        if restart and not self._stopping():
            run.schedule_restart(self.kubelet.max_backoff)
        else:
            run.done = True

    def _probe(self, run: ContainerRun) -> None:
        now = time.monotonic()
        env = self._env_cache.get(run.name, {})
        for kind, state in (
            ("startup", run.startup),
            ("liveness", run.liveness),
            ("readiness", run.readiness),
        ):
            if state is None or not state.due(now) or (kind != "startup" and not run.started):
                continue
            argv = [self.mounts.rewrite(a) for a in state.probe.get("exec", {}).get("command", [])]
            ok = state.record(check(state.probe, run.spec, self.ip or "", env, argv), now)
            if kind == "startup" and ok:
                run.started = True
            elif kind == "readiness":
                run.ready = ok and run.started
            elif not ok and state.failed:  # liveness or startup failed: kill; restart
                self.log.note(f"{kind} probe of {run.name} failed; killing it")
                if run.proc is not None:
                    procs.stop_group(run.proc, self._grace())
        if run.readiness is None:
            run.ready = run.started

    def _command(self, spec: JSON) -> tuple[list[str], dict[str, str], Path]:
        image = self.kubelet.images.resolve(spec.get("image", ""))
        if image is None:
            raise ImageError(
                f"local kubelet has no command for image {spec.get('image')!r}; known image "
                f"repositories: {self.kubelet.images.known()} (LocalKubelet.images.register)"
            )
        env = self._env(spec, dict(image.env))
        # The image's entrypoint is a path on this machine, never under a volume; only
        # what the pod spec says (command, args) is expanded and made local.
        entrypoint = [] if spec.get("command") else list(image.argv)
        from_spec = [*(spec.get("command") or ()), *spec.get("args", ())]
        argv = entrypoint + [self.mounts.rewrite(expand(a, env)) for a in from_spec]
        workdir = spec.get("workingDir")
        local = self.mounts.path(workdir) if workdir else None
        return argv, env, Path(local) if local else self.dir / "cwd"

    def _env(self, spec: JSON, image_env: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
        env |= {"PYTHONUNBUFFERED": "1", "HOSTNAME": self.pod_name, "TMPDIR": str(self.dir / "tmp")}
        env |= self.kubelet.base_env | image_env
        if self._automount():
            env["KUBECONFIG"] = str(self.dir / "kubeconfig")
        spec_env = container_env(
            self.pod,
            spec,
            pod_ip=self.ip or "",
            host_ip=HOST_IP,
            lookup=self._lookup,
            allocatable=self.kubelet.allocatable,
        )
        env |= {k: self.mounts.rewrite(v) for k, v in spec_env.items()}
        self._env_cache[spec["name"]] = env
        return env

    # -- status ----------------------------------------------------------------------

    def _phase(self) -> str:
        runs = self.runs
        if not all(
            r.done and r.state.get("terminated", {}).get("exitCode") == 0 for r in self.init_runs
        ):
            return "Failed" if any(r.done for r in self.init_runs) else "Pending"
        if any("waiting" in r.state and not r.last_state for r in runs):
            return "Pending"
        if not all(r.done for r in runs):
            return "Running"
        ok = all(r.state["terminated"]["exitCode"] == 0 for r in runs)
        return "Succeeded" if ok else "Failed"

    def status(self) -> JSON:
        ready = all(r.ready for r in self.runs)
        init_done = all(r.done for r in self.init_runs)
        conditions = [
            c
            for c in self.pod.get("status", {}).get("conditions", [])
            if c["type"] == "PodScheduled"
        ]
        flags = {
            "PodReadyToStartContainers": self._volumes_ready,
            "Initialized": init_done,
            "ContainersReady": ready,
            "Ready": ready,
        }
        conditions += [self._condition(t, v) for t, v in flags.items()]
        status: JSON = {
            "phase": self._phase(),
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self._start_time,
            "containerStatuses": [r.status() for r in self.runs],
        }
        if self.init_runs:
            status["initContainerStatuses"] = [r.status() for r in self.init_runs]
        return status

    def _condition(self, kind: str, value: bool) -> JSON:
        text = "True" if value else "False"
        old = {c["type"]: c for c in (self._published or {}).get("conditions", [])}.get(kind)
        since = old["lastTransitionTime"] if old and old["status"] == text else now_rfc3339()
        return {"type": kind, "status": text, "lastTransitionTime": since}

    def _publish(self, force: bool = False) -> None:
        status = self.status()
        if status == self._published and not force:
            return
        path = f"/api/v1/namespaces/{q(self.namespace)}/pods/{q(self.pod_name)}/status"
        try:
            self.kubelet.client.patch(path, {"metadata": {"uid": self.uid}, "status": status})
        except ApiError as err:
            if err.status == 404:
                self._gone = True
            self.log.note(f"status update failed: {err}")
            return
        self._published = status

    # -- termination -----------------------------------------------------------------

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get(
            "deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30)
        )
        if self._shutdown or self.kubelet.stopping:
            return min(float(grace), self.kubelet.stop_grace)
        return float(grace)

    def _terminate(self) -> None:
        grace = self._grace() if not self._gone else min(self._grace(), 2.0)
        running = [r for r in [*self.init_runs, *self.runs] if r.proc is not None]
        threads = [threading.Thread(target=procs.stop_group, args=(r.proc, grace)) for r in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for run in running:
            code = run.proc.returncode if run.proc is not None else None
            run.mark_exited(137 if code is None else code)
            run.done = True
        if self.ip:
            self.kubelet.ips.release(self.ip)
        self.log.note(f"pod {self.namespace}/{self.pod_name} stopped")
        if "deletionTimestamp" in self.pod["metadata"] and not self._gone:
            self._finish_deletion()

    def _finish_deletion(self) -> None:
        path = f"/api/v1/namespaces/{q(self.namespace)}/pods/{q(self.pod_name)}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        try:
            self.kubelet.client.delete(path, body)
        except ApiError as err:
            if err.status not in (404, 409):
                self.log.note(f"final delete failed: {err}")
