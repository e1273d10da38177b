"""A real Kubernetes control plane on loopback: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, all from one binary built by
devcluster/controlplane/build.sh.

    with Cluster() as cluster:
        cluster.kubectl("get", "nodes")

Everything (certificates, etcd data, logs, kubeconfigs) lives in one temp folder that
`stop()` removes. Each component runs in its own process group with a parent-death
signal (see procs.py), so nothing outlives the Python process, even when it crashes.

For people: `python -m devcluster.cluster up` starts the control plane (no node: pods
stay Pending), prints `export KUBECONFIG=...` and runs until Ctrl-C.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3
import yaml

from devcluster import procs
from devcluster.certs import CertificateAuthority, KeyPair, service_account_keys
from devcluster.kubeconfig import write_kubeconfig
from devcluster.rest import ApiError, KubeClient
from devcluster.waiting import wait_for

if TYPE_CHECKING:
    import kubernetes

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "devcluster" / "controlplane" / "build.sh"
DEFAULT_BINARY = REPO / ".cache" / "bin" / "controlplane"
SERVICE_CIDR = "10.0.0.0/24"
# Controllers with nothing to do here: storage and DRA (no volumes but local folders),
# autoscaling, node IPAM; and endpoints/EndpointSlices unless a real node runs (`node_ip`:
# its pod IPs and kube-proxy). Fewer controllers also start faster.
DISABLED_CONTROLLERS = (
    "persistentvolume-attach-detach-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-expander-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "ephemeral-volume-controller",
    "volumeattributesclass-protection-controller",
    "resourceclaim-controller",
    "device-taint-eviction-controller",
    "horizontal-pod-autoscaler-controller",
    "storage-version-migrator-controller",
    "node-ipam-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
)
ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "apiserver", "controller-manager", "scheduler")


class ClusterError(RuntimeError):
    """The control plane could not start or answer."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{' '.join(self.cmd)} exited {self.returncode}:\n{self.stderr}{self.stdout}"


def ensure_binary(binary: Path = DEFAULT_BINARY) -> Path:
    """Build the control-plane binary if it is missing or stale (quick when current)."""
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (binary.parent / ".controlplane.build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time across test sessions
        result = subprocess.run(
            [str(BUILD_SCRIPT), str(binary)], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        raise ClusterError(
            f"building {binary} with {BUILD_SCRIPT} failed (needs Go and the module "
            f"proxy):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_kubectl(binary: Path = DEFAULT_BINARY) -> list[str]:
    """The kubectl command: $KUBECTL, else the controlplane's own, else kubectl on PATH."""
    if env := os.environ.get("KUBECTL"):
        return [env]
    if binary.exists():
        probe = subprocess.run(
            [str(binary), "kubectl", "version", "--client"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return [str(binary), "kubectl"]
    if path := shutil.which("kubectl"):
        return [path]
    raise ClusterError("no kubectl: rebuild devcluster/controlplane or put kubectl on PATH")


class Cluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback.

    With `node_ip` (a real node's address, devcluster/node.py), the API server also
    listens there and advertises it, so the `kubernetes` Service routes pods to it; the
    endpoint controllers run (real pod IPs are valid endpoints) and the API server holds
    a client certificate that kubelets accept (`kubectl logs/exec`).
    """

    def __init__(
        self, binary: Path | None = None, root: Path | None = None, node_ip: str | None = None
    ) -> None:
        self.binary = binary or DEFAULT_BINARY
        self.node_ip = node_ip
        self._own_root = root is None
        self.root = root or procs.temp_root("hotswap-cluster-")
        self.logs = self.root / "logs"
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.server = ""
        self.ca_cert = self.root / "pki" / "ca.crt"
        self._ca: CertificateAuthority | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._kubectl: list[str] | None = None
        self._lock = threading.Lock()
        self.started_in: float | None = None
        self.timings: dict[str, float] = {}  # seconds from start() to each phase's end

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Cluster:
        """Start all four components and wait until they are ready."""
        if not self.binary.exists():
            raise ClusterError(f"{self.binary} is missing: run {BUILD_SCRIPT} (make controlplane)")
        began = time.monotonic()
        deadline = began + timeout
        atexit.register(self.stop)
        try:
            pki = self._make_pki()
            self.timings["pki"] = time.monotonic() - began
            for attempt in range(3):
                try:
                    self._start_once(pki, began, deadline)
                    break
                except ClusterError as err:
                    # A free port was taken by another process meanwhile: new ports, again.
                    if "address already in use" not in str(err) or attempt == 2:
                        raise
                    self._stop_processes()
                    shutil.rmtree(self.root / "etcd", ignore_errors=True)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _start_once(self, pki: dict[str, KeyPair], began: float, deadline: float) -> None:
        ports = {name: free_port() for name in (*COMPONENTS, "etcd-peer")}
        self.server = f"https://127.0.0.1:{ports['apiserver']}"
        self._write_kubeconfigs(pki)
        self._launch("etcd", self._etcd_args(ports))
        self._launch("apiserver", self._apiserver_args(ports, pki))
        self._wait_ready(ports, ("etcd", "apiserver"), deadline)
        self.timings["apiserver"] = time.monotonic() - began
        # Only now: started earlier, they read kube-system before RBAC's bootstrap roles
        # exist, get 403 and exit.
        self._launch("controller-manager", self._component_args("controller-manager", ports))
        self._launch("scheduler", self._component_args("scheduler", ports))
        self._wait_ready(ports, ("controller-manager", "scheduler"), deadline)
        self.timings["controllers"] = time.monotonic() - began
        self._poll("controller-manager", functools.partial(_has_default_sa, self.rest()), deadline)

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL) and remove the temp folder."""
        atexit.unregister(self.stop)
        self._stop_processes()
        if self._own_root and self.root.exists() and not os.environ.get("HOTSWAP_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def _stop_processes(self) -> None:
        with self._lock:
            first = [self._procs.pop(n) for n in COMPONENTS[1:] if n in self._procs]
            # Throwaway state: no need to wait long for in-flight requests to drain.
            threads = [threading.Thread(target=procs.stop_group, args=(p, 3.0)) for p in first]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if etcd := self._procs.pop("etcd", None):
                procs.stop_group(etcd, 5.0)

    def __enter__(self) -> Cluster:
        return self if self._procs else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        """Process ids (= process group ids) of the running components."""
        return {name: p.pid for name, p in self._procs.items()}

    # -- clients --------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as cluster admin; raises KubectlError (with stderr) when check fails."""
        if self._kubectl is None:
            self._kubectl = find_kubectl(self.binary)
        cmd = [*self._kubectl, "--kubeconfig", str(self.kubeconfig), *args]
        env = {**os.environ, "KUBECACHEDIR": str(self.root / "kube-cache")}  # not ~/.kube
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, check=False, timeout=120, env=env
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def apply_crd(self, path: Path, timeout: float = 60.0) -> None:
        """Server-side apply of the CRD in `path` (or of each CRD in the folder `path`),
        then wait until each is Established and served. (`kubectl wait` fails, rather
        than waits, while a new CRD has no conditions.)"""
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(file))
        client = self.rest()
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for file in files:
            doc = yaml.safe_load(file.read_text())
            name, group = doc["metadata"]["name"], doc["spec"]["group"]
            plural, version = doc["spec"]["names"]["plural"], doc["spec"]["versions"][0]["name"]

            def established(name: str = name) -> bool:
                conditions = (client.get(f"{crds}/{name}").get("status") or {}).get("conditions")
                return any(
                    c["type"] == "Established" and c["status"] == "True" for c in conditions or ()
                )

            def served(group: str = group, version: str = version, plural: str = plural) -> bool:
                try:
                    client.get(f"/apis/{group}/{version}/{plural}")
                except Exception:
                    return False
                return True

            wait_for(established, timeout=timeout, what=f"CRD {name} Established")
            wait_for(served, timeout=timeout, what=f"CRD {name} served")

    def api_client(self) -> kubernetes.client.ApiClient:
        """A kubernetes-client ApiClient authenticated as cluster admin."""
        from kubernetes import config

        client: kubernetes.client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return client

    def rest(self) -> KubeClient:
        """A small dict-based REST client authenticated as cluster admin."""
        return KubeClient(self.kubeconfig)

    def node_kubeconfig(self, node: str) -> Path:
        """A kubeconfig for a kubelet: user system:node:<node> in group system:nodes."""
        assert self._ca is not None, "start() the cluster first"
        pair = self._ca.issue(f"node-{node}", f"system:node:{node}", ("system:nodes",))
        path = self.root / f"node-{node}.kubeconfig"
        return write_kubeconfig(
            path, self.server, self.ca_cert, cert=pair.cert, key=pair.key, user=node
        )

    def token_kubeconfig(self, token: str, name: str, namespace: str | None = None) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        path = self.root / f"token-{name}.kubeconfig"
        return write_kubeconfig(
            path, self.server, self.ca_cert, token=token, namespace=namespace, user=name
        )

    def issue(
        self, name: str, common_name: str, orgs: tuple[str, ...] = (), hosts: tuple[str, ...] = ()
    ) -> KeyPair:
        """A certificate from the cluster CA (server and client use when `hosts` is set)."""
        assert self._ca is not None, "start() the cluster first"
        return self._ca.issue(name, common_name, orgs, hosts=hosts, server=bool(hosts))

    def user_kubeconfig(self, name: str, common_name: str, orgs: tuple[str, ...] = ()) -> Path:
        """A kubeconfig with a client certificate for user `common_name` in `orgs`."""
        pair = self.issue(name, common_name, orgs)
        path = self.root / f"{name}.kubeconfig"
        return write_kubeconfig(
            path, self.server, self.ca_cert, cert=pair.cert, key=pair.key, user=name
        )

    def bound_user(self, user: str, namespace: str, cluster_role: str) -> Path:
        """A kubeconfig for ``user``, bound to ``cluster_role`` in ``namespace`` only (a
        RoleBinding named ``<user>-<cluster_role>``)."""
        self.kubectl(
            "create", "rolebinding", f"{user}-{cluster_role}", "-n", namespace,
            f"--clusterrole={cluster_role}", f"--user={user}",
        )  # fmt: skip
        return self.user_kubeconfig(f"{user}-{uuid.uuid4().hex[:6]}", user)

    def version(self) -> str:
        """The API server's gitVersion."""
        return str(self.rest().get("/version")["gitVersion"])

    # -- setup ----------------------------------------------------------------------

    def _make_pki(self) -> dict[str, KeyPair]:
        ca = self._ca = CertificateAuthority(self.root / "pki")
        hosts = (
            *("127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default"),
            *("kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
            *((self.node_ip,) if self.node_ip else ()),
        )
        pairs = {
            "ca": ca.pair,
            "sa": service_account_keys(self.root / "pki"),
            "serving": ca.issue("apiserver", "kube-apiserver", hosts=hosts, server=True),
            "admin": ca.issue("admin", "kubernetes-admin", ("system:masters",)),
            "front-proxy": ca.issue("front-proxy-client", "front-proxy-client"),
            "controller-manager": ca.issue("controller-manager", "system:kube-controller-manager"),
            "scheduler": ca.issue("scheduler", "system:kube-scheduler"),
        }
        if self.node_ip:
            pairs["kubelet-client"] = ca.issue("apiserver-kubelet-client", "kube-apiserver")
        return pairs

    def _write_kubeconfigs(self, pki: dict[str, KeyPair]) -> None:
        for name in ("admin", "controller-manager", "scheduler"):
            path = self.kubeconfig if name == "admin" else self.root / f"{name}.kubeconfig"
            pair = pki[name]
            write_kubeconfig(
                path, self.server, self.ca_cert, cert=pair.cert, key=pair.key, user=name
            )

    def _launch(self, name: str, args: list[str]) -> None:
        log = self.logs / f"{name}.log"
        self._procs[name] = procs.spawn([str(self.binary), name, *args], log=log, cwd=self.root)

    def _etcd_args(self, ports: dict[str, int]) -> list[str]:
        client = f"http://127.0.0.1:{ports['etcd']}"
        peer = f"http://127.0.0.1:{ports['etcd-peer']}"
        return [
            "--name=default",
            f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # throwaway data: skip fsync, much faster on slow disks
            "--log-level=warn",
        ]

    def _apiserver_args(self, ports: dict[str, int], pki: dict[str, KeyPair]) -> list[str]:
        if self.node_ip:  # pods reach it through the `kubernetes` Service
            network = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.node_ip}",
                f"--kubelet-client-certificate={pki['kubelet-client'].cert}",
                f"--kubelet-client-key={pki['kubelet-client'].key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            network = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # a loopback address cannot be an endpoint
            ]
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            *network,
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={self.root / 'apiserver'}",
            f"--tls-cert-file={pki['serving'].cert}",
            f"--tls-private-key-file={pki['serving'].key}",
            f"--client-ca-file={pki['ca'].cert}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki['sa'].cert}",
            f"--service-account-signing-key-file={pki['sa'].key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Aggregation-layer settings; the components read them from kube-system.
            f"--requestheader-client-ca-file={pki['ca'].cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki['front-proxy'].cert}",
            f"--proxy-client-key-file={pki['front-proxy'].key}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=0",
        ]

    def _component_args(self, name: str, ports: dict[str, int]) -> list[str]:
        kubeconfig = self.root / f"{name}.kubeconfig"
        pki = self.root / "pki"
        args = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports[name]}",
            f"--cert-dir={self.root / name}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        if name == "controller-manager":
            args += [
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--node-monitor-period=1s",
                "--controllers=*," + ",".join(f"-{c}" for c in self._disabled_controllers()),
            ]
        return args

    def _disabled_controllers(self) -> tuple[str, ...]:
        if not self.node_ip:
            return DISABLED_CONTROLLERS
        return tuple(c for c in DISABLED_CONTROLLERS if not c.startswith("endpoint"))

    # -- readiness ------------------------------------------------------------------

    def _wait_ready(self, ports: dict[str, int], names: tuple[str, ...], deadline: float) -> None:
        admin = ssl.create_default_context(cafile=str(self.ca_cert))
        admin.load_cert_chain(str(self.root / "pki/admin.crt"), str(self.root / "pki/admin.key"))
        insecure = ssl._create_unverified_context()  # components' self-signed serving certs
        checks: list[tuple[str, str, ssl.SSLContext | None]] = [
            ("etcd", f"http://127.0.0.1:{ports['etcd']}/health", None),
            ("apiserver", f"{self.server}/readyz", admin),
            (
                "controller-manager",
                f"https://127.0.0.1:{ports['controller-manager']}/healthz",
                insecure,
            ),
            ("scheduler", f"https://127.0.0.1:{ports['scheduler']}/healthz", insecure),
        ]
        for name, url, ctx in checks:
            if name in names:
                self._poll(name, functools.partial(_http_ok, url, ctx), deadline)

    def _poll(self, name: str, check: Callable[[], bool], deadline: float) -> None:
        procs.wait_started(
            name, check, deadline, children=self._procs, logs=self.logs, error=ClusterError
        )


def _http_ok(url: str, ctx: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _has_default_sa(client: KubeClient) -> bool:
    """The serviceaccount controller has run: pods can now be created in `default`."""
    try:
        client.get("/api/v1/namespaces/default/serviceaccounts/default")
        client.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
    except (ApiError, OSError, urllib3.exceptions.HTTPError):
        return False
    return True


def _up() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on SIGTERM too
    binary = ensure_binary()
    began = time.monotonic()
    cluster = Cluster(binary).start()
    print(f"# control plane {cluster.version()} ready in {time.monotonic() - began:.1f}s")
    print("# no node: pods stay Pending (a real node: devcluster/node.py, `make demo`)")
    print(f"# component logs: {cluster.logs}; Ctrl-C stops everything")
    print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
    try:
        while all(p.poll() is None for p in cluster._procs.values()):
            time.sleep(1)
        print("a control-plane component exited; see its log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["up"]:
        print("usage: python -m devcluster.cluster up", file=sys.stderr)
        return 2
    return _up()


if __name__ == "__main__":
    sys.exit(main())
