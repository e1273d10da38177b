"""A real Kubernetes node beside the control plane: kubelet, containerd, runc, CNI,
kube-proxy.

    with Cluster(node_ip=NODE_IP) as cluster, RealNode(cluster) as node:
        node.load_images(["localhost/hotswap-runtime:dev"])   # from podman
        ...                                                    # pods run as containers

The pieces: kubelet and kube-proxy built from the Kubernetes modules of
devcluster/controlplane, containerd v2 and its runc shim from containerd's module, and the
pause program (scripts/build-node.sh); runc and the CNI plugins from Debian's packages
(scripts/node-deps.sh). The node has a non-loopback address (`NODE_IP`, on a bridge
without ports: this kernel has no dummy driver) so that the API server reaches the
kubelet (`kubectl logs/exec`) and pods reach the API server (the `kubernetes` Service,
through kube-proxy). Pods get addresses on another bridge (`POD_CIDR`); Service
addresses are routed to the portless bridge, so traffic to
a ClusterIP never leaves the machine even before kube-proxy's rules exist.

Everything the node starts, mounts and creates (processes, container shims, cgroups,
mounts, network namespaces, both bridges, iptables rules, sysctls)
is undone by `cleanup()`: on `stop()`, by a guardian process when the test process dies
without stopping (it waits on a pipe that only the test process holds), and at the next
start. Images stay in containerd's content store (`STORE`) between runs: importing a
runtime image with torch takes a minute, so an image is imported again only when its
podman image id changes. Only the current version of each stays: at start and after each
import, `_prune_images` removes every other image (a rebuilt image's previous version,
which containerd's CRI plugin keeps under its `sha256:<id>` name, holds the layers it
does not share with the new one: up to 6 GB for the runtime image), and containerd's
garbage collector frees their content and snapshots.

One node per machine at a time (fixed interface names): a lock file serializes them.

For people: `python -m devcluster.node cleanup` undoes a node left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from devcluster import procs
from devcluster.cluster import REPO, SERVICE_CIDR, Cluster, ClusterError, free_port
from devcluster.rest import ApiError
from devcluster.waiting import wait_for

BIN = REPO / ".cache" / "bin"
BUILD_SCRIPT = REPO / "scripts" / "build-node.sh"
NODE_NAME = "hotswap-node"
NODE_IP = "10.250.0.1"
NODE_LINK = "hsnode0"  # a bridge without ports: the node address; Service IPs route here
BRIDGE = "hscni0"
POD_CIDR = "10.244.0.0/16"
POD_GATEWAY = "10.244.0.1"
CGROUP_ROOT = "hotswap-node"  # under each cgroup v1 hierarchy
STORE = Path("/var/lib/hotswap-node")  # containerd's root (images), kept between runs
RUN = STORE / "run"  # everything of one run: sockets, kubelet, state, logs
LOCK = Path("/run/hotswap-node.lock")
PAUSE_IMAGE = "localhost/pause:local"
# containerd's default sandbox image; the local pause image is tagged with this name
# too, as containerd asked for it in a trial although another was configured.
DEFAULT_PAUSE = "registry.k8s.io/pause:3.10.1"
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet")
RUNC = "/usr/sbin/runc"
CNI_BIN = Path("/usr/lib/cni")


class NodeError(RuntimeError):
    """The node could not start, or did not become Ready."""


def ensure_binaries() -> None:
    """Build the node's binaries if missing or stale (quick when current)."""
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NodeError(f"{BUILD_SCRIPT} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    missing = [
        p for p in (RUNC, CNI_BIN / "bridge", CNI_BIN / "host-local") if not Path(p).exists()
    ]
    if missing:
        raise NodeError(f"missing {missing}: run scripts/node-deps.sh (Debian packages)")


def _run(*argv: str, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, input=input)
    if check and done.returncode != 0:
        raise NodeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class RealNode:
    """kubelet + containerd + kube-proxy registered as node `NODE_NAME` on `cluster`."""

    def __init__(self, cluster: Cluster, sync_frequency: str = "10s") -> None:
        """`sync_frequency`: the kubelet's periodic pod resync, which is also when it
        updates a pod's ConfigMap and Secret volumes (kubelet's default is "1m")."""
        if cluster.node_ip != NODE_IP:
            raise NodeError(f"start the cluster with Cluster(node_ip={NODE_IP!r})")
        self.cluster = cluster
        self.name = NODE_NAME
        self.sync_frequency = sync_frequency
        self.ip = NODE_IP
        self.logs = RUN / "logs"
        self.socket = RUN / "containerd.sock"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock: Any = None
        self._guardian: subprocess.Popen[bytes] | None = None
        self._guardian_pipe: int | None = None
        self.started_in: float | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> RealNode:
        began = time.monotonic()
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = LOCK.open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise NodeError(f"another real node runs on this machine ({LOCK} is locked)") from None
        try:
            cleanup()  # whatever a previous run left
            self.logs.mkdir(parents=True)
            self._start_guardian()
            self._network()
            self._start_dns()
            self._start_containerd(began + timeout)
            self._prune_images()
            self._load_pause()
            self._start_kubelet()
            self._start_kube_proxy()
            self._wait_ready(began + timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Delete this node's pods, stop everything, undo every change to the machine."""
        if self._lock is None:
            return
        with contextlib.suppress(Exception):
            if "kubelet" in self._procs and self._procs["kubelet"].poll() is None:
                self._drain()
        for name in ("kube-proxy", "kubelet", "cluster-dns"):
            if proc := self._procs.pop(name, None):
                procs.stop_group(proc, 10.0)
        if proc := self._procs.pop("containerd", None):
            procs.stop_group(proc, 10.0)
        keep = os.environ.get("HOTSWAP_KEEP")
        if keep and self.logs.exists():  # cleanup() removes RUN: keep the logs
            dest = REPO / ".cache" / "node-logs"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.logs, dest)
        cleanup()
        if self._guardian is not None and self._guardian_pipe is not None:
            os.close(self._guardian_pipe)  # the guardian cleans up once more and exits
            self._guardian.wait(timeout=60)
            self._guardian = self._guardian_pipe = None
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None
        with contextlib.suppress(Exception):
            self.cluster.rest().delete(f"/api/v1/nodes/{self.name}")

    def __enter__(self) -> RealNode:
        return self if self._procs else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drain(self) -> None:
        """Cordon the node, delete every pod bound to it and wait until they are gone, so
        that the kubelet stops their containers and unmounts their volumes itself."""
        client = self.cluster.rest()
        # Cordon first: replacements that controllers create stay Pending, off this node.
        client.patch(f"/api/v1/nodes/{self.name}", {"spec": {"unschedulable": True}})
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        for pod in client.get("/api/v1/pods", selector)["items"]:
            meta = pod["metadata"]
            with contextlib.suppress(ApiError):
                client.delete(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"gracePeriodSeconds": 1},
                )
        wait_for(
            lambda: not client.get("/api/v1/pods", selector)["items"],
            timeout=60,
            what=f"pods on {self.name} deleted",
        )

    def _start_guardian(self) -> None:
        """A process outside our process group that runs cleanup() when the pipe we hold
        closes: when this process exits, however it exits."""
        read, write = os.pipe()
        os.set_inheritable(read, True)
        self._guardian = subprocess.Popen(
            [sys.executable, "-m", "devcluster.node", "guard", str(read)],
            cwd=REPO,
            pass_fds=(read,),
            start_new_session=True,
            stdout=(STORE / "guardian.log").open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(_pythonpath())},
        )
        os.close(read)
        self._guardian_pipe = write

    # -- pieces ---------------------------------------------------------------------

    def _network(self) -> None:
        for sysctl in SYSCTLS:  # restored by cleanup()
            saved = RUN / "sysctl" / sysctl.replace("/", ".")
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(Path("/proc/sys", sysctl).read_text())
        _run("ip", "link", "add", NODE_LINK, "type", "bridge")  # no dummy driver here
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_LINK)
        _run("ip", "link", "set", NODE_LINK, "up")
        # Service addresses go to the portless bridge (a sink) until kube-proxy rewrites them.
        _run("ip", "route", "add", SERVICE_CIDR, "dev", NODE_LINK)
        conf = RUN / "cni" / "net.d"
        conf.mkdir(parents=True, exist_ok=True)
        network = {
            "cniVersion": "1.0.0",
            "name": "hotswap",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(RUN / "cni" / "ipam"),
                    },
                }
            ],
        }
        (conf / "10-hotswap.conflist").write_text(json.dumps(network, indent=2))

    def _start_dns(self) -> None:
        """Cluster DNS on the node address (clusterdns.py): Service names for pods."""
        argv = [
            sys.executable,
            "-m",
            "devcluster.clusterdns",
            NODE_IP,
            str(self.cluster.kubeconfig),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(_pythonpath())}
        self._spawn("cluster-dns", argv, env)

    def _start_containerd(self, deadline: float) -> None:
        config = RUN / "containerd.toml"
        config.write_text(_containerd_config(self.socket))
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        self._spawn("containerd", [str(BIN / "containerd"), "--config", str(config)], env)

        def serving() -> bool:
            return _ctr(self.socket, "version", check=False) is not None

        self._poll("containerd", serving, deadline)

    def _load_pause(self) -> None:
        self.load_images([PAUSE_IMAGE])
        _ctr(self.socket, "images", "tag", "--force", PAUSE_IMAGE, DEFAULT_PAUSE)

    def load_images(self, images: Sequence[str]) -> float:
        """Copy podman images into containerd unless there already (same image id), all
        changed ones in one archive (layers shared by several are copied once).
        Returns the seconds the copy took (0 when nothing changed)."""
        stamps_path = STORE / "images.json"
        stamps: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            stamps = json.loads(stamps_path.read_text())
        present = set((_ctr(self.socket, "images", "ls", "-q") or "").split())
        ids = {
            image: _run(*PODMAN, "image", "inspect", "--format", "{{.Id}}", image).strip()
            for image in images
        }
        changed = [i for i in images if stamps.get(i) != ids[i] or i not in present]
        if not changed:
            return 0.0
        began = time.monotonic()
        archive = RUN / "images.tar"
        try:
            _run(
                *PODMAN,
                "save",
                "--multi-image-archive",
                "--format",
                "docker-archive",
                "-o",
                str(archive),
                *changed,
            )
            _ctr(self.socket, "images", "import", str(archive))
        finally:
            archive.unlink(missing_ok=True)
        stamps.update({i: ids[i] for i in changed})
        stamps_path.write_text(json.dumps(stamps, indent=1))
        self._prune_images()
        return time.monotonic() - began

    def _prune_images(self) -> None:
        """Remove from containerd every image but the images this node imports (named in
        images.json, still in podman) as last imported, and let containerd's garbage
        collector free what they held; prints what it removed and the space freed."""
        stamps: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            stamps = json.loads((STORE / "images.json").read_text())
        listed = _run(*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}").split()
        keep = {PAUSE_IMAGE, *(set(stamps) & set(listed))}
        stale = stale_images(_ctr(self.socket, "images", "ls") or "", keep)
        if not stale:
            return
        free = shutil.disk_usage(STORE).free
        _ctr(self.socket, "images", "rm", "--sync", *stale)  # --sync: collected on return
        freed = shutil.disk_usage(STORE).free - free
        print(
            f"node images: removed {len(stale)}, no current image this node imports "
            f"({', '.join(stale)}): {freed / 1e9:.2f} GB freed on the disk of {STORE}",
            flush=True,
        )

    def _start_kubelet(self) -> None:
        _make_cgroups()
        root = RUN / "kubelet"
        pki = root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        serving = self.cluster.issue("kubelet-serving", NODE_NAME, hosts=(NODE_IP, NODE_NAME))
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine mounts cgroup v1
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": NODE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "x509": {"clientCAFile": str(self.cluster.ca_cert)},
                "webhook": {"enabled": False},
                "anonymous": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "resolvConf": "/etc/resolv.conf",
            "clusterDomain": "cluster.local",
            "clusterDNS": [NODE_IP],
            "syncFrequency": self.sync_frequency,
            "nodeStatusUpdateFrequency": "2s",
            "serializeImagePulls": False,
            # Small thresholds: the disk and memory are shared with everything else here,
            # and the images must never be garbage-collected (nothing can pull them).
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "enforceNodeAllocatable": ["pods"],
            "shutdownGracePeriod": "0s",
            "rotateCertificates": False,
            "containerLogMaxSize": "50Mi",
        }
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [
            str(BIN / "kubelet"),
            f"--config={path}",
            f"--kubeconfig={self.cluster.node_kubeconfig(NODE_NAME)}",
            f"--root-dir={root}",
            f"--cert-dir={pki}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ]
        self._spawn("kubelet", argv)

    def _start_kube_proxy(self) -> None:
        kubeconfig = self.cluster.user_kubeconfig("kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "minSyncPeriod": "0s", "syncPeriod": "30s"},
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        path = RUN / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(BIN / "kube-proxy"), f"--config={path}", "--v=1"])

    def _wait_ready(self, deadline: float) -> None:
        client = self.cluster.rest()

        def ready() -> bool:
            try:
                node = client.get(f"/api/v1/nodes/{self.name}")
            except ApiError:
                return False
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node.get("status", {}).get("conditions", [])
            )

        self._poll("kubelet", ready, deadline)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.logs / f"{name}.log"
        self._procs[name] = procs.spawn(argv, log=log, env=env, cwd=RUN)

    def _poll(self, name: str, check: Callable[[], bool], deadline: float) -> None:
        procs.wait_started(
            name,
            check,
            deadline,
            children=self._procs,
            logs=self.logs,
            error=NodeError,
            interval=0.2,
        )

    # -- for tests ------------------------------------------------------------------

    @contextlib.contextmanager
    def dns_stopped(self) -> Iterator[None]:
        """The cluster DNS stopped for the block (a CoreDNS outage: pods resolve no
        name, each query refused at once), started again after it."""
        if proc := self._procs.pop("cluster-dns", None):
            procs.stop_group(proc, 10.0)
        try:
            yield
        finally:
            self._start_dns()

    def dns_running(self) -> bool:
        proc = self._procs.get("cluster-dns")
        return proc is not None and proc.poll() is None

    def logs_of(self, namespace: str, pod: str, container: str | None = None) -> str:
        """`kubectl logs` of a pod: through the API server and the kubelet, as a user."""
        args = ["logs", "-n", namespace, pod, "--all-containers"]
        if container:
            args = ["logs", "-n", namespace, pod, "-c", container]
        return self.cluster.kubectl(*args, check=False).stdout

    def exec(self, namespace: str, pod: str, *command: str) -> str:
        """`kubectl exec` in a pod's first container; returns stdout."""
        return self.cluster.kubectl("exec", "-n", namespace, pod, "--", *command).stdout

    def pids(self, namespace: str, pod: str) -> list[int]:
        """Host PIDs of every process of a pod (its containers and its pause process):
        the members of its cgroup, `pod<uid>` below the kubelet's cgroupRoot."""
        uid = self.cluster.rest().get(f"/api/v1/namespaces/{namespace}/pods/{pod}")["metadata"][
            "uid"
        ]
        found: set[int] = set()
        for top in _cgroup_dirs():
            for folder in top.rglob(f"pod{uid}"):
                for procs_file in folder.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError, ValueError):
                        found |= {int(x) for x in procs_file.read_text().split()}
            if found:
                break
        return sorted(found)


PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
OPERATOR_IMAGE = "localhost/hotswap-operator:dev"
RUNTIME_IMAGE = "localhost/hotswap-runtime:dev"
# The runtime image plus the tiny model (devcluster/tiny.py) on PYTHONPATH, as a user's
# image adds their model code: e2e tests of that model run on it.
TEST_RUNTIME_IMAGE = "localhost/hotswap-runtime-test:dev"
TEST_LAYER = """FROM {base}
COPY devcluster /opt/hotswap-tests/devcluster
ENV PYTHONPATH=/opt/hotswap-tests
"""


def ensure_images() -> None:
    """Build the images from the Dockerfile (scripts/build-images.sh; cached layers make
    it quick when nothing changed) and the test layer on top of the runtime image."""
    done = subprocess.run(
        [str(REPO / "scripts" / "build-images.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise NodeError(
            f"scripts/build-images.sh failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    with tempfile.TemporaryDirectory(prefix="hotswap-test-layer-") as tmp:
        context = Path(tmp)
        package = context / "devcluster"
        package.mkdir()
        for name in ("__init__.py", "tiny.py"):
            shutil.copy(REPO / "devcluster" / name, package)
        (context / "Containerfile").write_text(TEST_LAYER.format(base=RUNTIME_IMAGE))
        _run(*PODMAN, "build", "-q", "-t", TEST_RUNTIME_IMAGE, str(context))


def stale_images(listing: str, keep: set[str]) -> list[str]:
    """The images of `ctr images ls` output `listing` that are not in `keep` and share
    no manifest with one that is: a kept image's other names (the CRI plugin's
    `sha256:<id>` name, the pause image's registry.k8s.io alias) stay."""
    rows = [line.split()[:3] for line in listing.splitlines()[1:] if line.strip()]
    kept = {digest for name, _, digest in rows if name in keep}
    return [name for name, _, digest in rows if name not in keep and digest not in kept]


def _ctr(socket_path: Path, *args: str, check: bool = True) -> str | None:
    argv = [str(BIN / "ctr"), "--address", str(socket_path), "--namespace", "k8s.io", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if check:
            raise NodeError(f"ctr {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return None
    return done.stdout


def _containerd_config(sock: Path) -> str:
    return f"""version = 3
root = "{STORE / "containerd"}"
state = "{RUN / "containerd-state"}"
# Nothing outside this node's folders: no NRI socket, no /opt/containerd.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.cri.v1.runtime"]
  # This machine forbids negative oom_score_adj values; containerd's -998 for
  # sandboxes made runc fail ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["{CNI_BIN}"]
  conf_dir = "{RUN / "cni" / "net.d"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def _pythonpath() -> list[str]:
    return [str(REPO), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]


# -- cleanup -------------------------------------------------------------------------


def cleanup() -> list[str]:
    """Undo everything a node (of this or an earlier, crashed run) left on the machine.
    Idempotent; returns what it did, for logs."""
    done: list[str] = []
    done += _kill_processes()
    done += _kill_cgroups()
    done += _unmount_under(STORE)
    for link in (BRIDGE, NODE_LINK):
        if Path(f"/sys/class/net/{link}").exists():
            _run("ip", "link", "del", link, check=False)
            done.append(f"deleted link {link}")
    done += _clean_iptables()
    done += _restore_sysctls()
    done += _remove_cgroups()
    if RUN.exists():
        shutil.rmtree(RUN, ignore_errors=True)
        done.append(f"removed {RUN}")
    return done


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_processes() -> list[str]:
    """kubelet, kube-proxy, containerd and shims of a node: their command lines name
    STORE (every config, socket and root lives there)."""
    mine = {str(os.getpid()), str(os.getppid())}
    found = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and p.name not in mine and str(STORE) in _cmdline(p.name)
    ]
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    return [f"killed {pid}: {_cmdline(pid)[:80]}" for pid in found]


def _cgroup_dirs() -> Iterable[Path]:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        path = hierarchy / CGROUP_ROOT
        if path.is_dir():
            yield path


def _make_cgroups() -> None:
    """The kubelet's cgroupRoot, in every cgroup v1 hierarchy: the kubelet creates only
    what lies below it. cpuset needs its cpus and mems copied from the parent."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.name == "unified" or not (hierarchy / "cgroup.procs").exists():
            continue
        path = hierarchy / CGROUP_ROOT
        path.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (path / name).exists() and not (path / name).read_text().strip():
                (path / name).write_text((hierarchy / name).read_text())


def _kill_cgroups() -> list[str]:
    """Every process in the node's cgroups (containers, their children)."""
    killed: set[int] = set()
    for _ in range(50):
        pids: set[int] = set()
        for top in _cgroup_dirs():
            for procs_file in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids |= {int(x) for x in procs_file.read_text().split()}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.1)
    return [f"killed {len(killed)} container processes"] if killed else []


def _remove_cgroups() -> list[str]:
    removed = []
    for top in _cgroup_dirs():
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for path in [*dirs, top]:
            with contextlib.suppress(OSError):
                path.rmdir()
        removed.append(f"removed cgroup {top}")
    return removed


def _unmount_under(root: Path) -> list[str]:
    """Unmount every mount point under `root`, deepest first (network namespaces,
    overlay rootfs of containers, shm, kubelet's tmpfs volumes)."""
    done = []
    for _ in range(5):
        points = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].encode().decode("unicode_escape")
                if point == str(root) or point.startswith(f"{root}/"):
                    points.append(point)
        if not points:
            break
        for point in sorted(set(points), key=lambda p: -p.count("/")):
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            done.append(f"unmounted {point}")
    return done


def _clean_iptables() -> list[str]:
    """Remove every KUBE-* chain (kube-proxy's and kubelet's KUBE-FIREWALL, canaries)
    and the rules that jump to them, in every table, IPv4 and IPv6."""
    done = []
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(f"{tool}-save"):
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            saved = subprocess.run(
                [f"{tool}-save", "-t", table], capture_output=True, text=True, check=False
            ).stdout
            chains = [line[1:].split()[0] for line in saved.splitlines() if line[:6] == ":KUBE-"]
            if not chains:
                continue
            for line in saved.splitlines():
                words = shlex.split(line)
                if (
                    words[:1] == ["-A"]
                    and not words[1].startswith("KUBE-")
                    and any(w.startswith("KUBE-") for w in words[2:])
                ):
                    subprocess.run([tool, "-t", table, "-D", *words[1:]], check=False)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-F", chain], check=False)
            for chain in chains:
                subprocess.run([tool, "-t", table, "-X", chain], check=False)
            done.append(f"{tool} -t {table}: removed {len(chains)} KUBE-* chains")
    return done


def _restore_sysctls() -> list[str]:
    done = []
    saved = RUN / "sysctl"
    if saved.is_dir():
        for path in saved.iterdir():
            target = Path("/proc/sys", path.name.replace(".", "/"))
            value = path.read_text().strip()
            with contextlib.suppress(OSError):
                if target.read_text().strip() != value:
                    target.write_text(value)
                    done.append(f"sysctl {path.name}={value}")
    return done


def _guard(fd: int) -> int:
    """Wait until the pipe closes (the test process stopped the node or died), then
    clean up."""
    with os.fdopen(fd, "rb") as pipe:
        while pipe.read(4096):
            pass
    for line in cleanup():
        print(f"node guardian: {line}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["guard"] and len(args) == 2:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the tests is not for us
        return _guard(int(args[1]))
    if args == ["cleanup"]:
        for line in cleanup():
            print(line)
        return 0
    print("usage: python -m devcluster.node cleanup", file=sys.stderr)
    return 2


def node_cluster() -> Cluster:
    """A control plane ready for a real node."""
    from devcluster.cluster import ensure_binary

    return Cluster(ensure_binary(), node_ip=NODE_IP)


__all__ = ["NODE_IP", "ClusterError", "RealNode", "cleanup", "ensure_binaries", "node_cluster"]

if __name__ == "__main__":
    sys.exit(main())
