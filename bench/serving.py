"""Benchmark: this runtime against KServe's Python ModelServer, same model, same load.

One run, one machine, one load generator. The model is torchvision resnet18 (random
weights saved once as safetensors, 3x64x64 inputs) on CPU with the same torch thread
count in every server. Servers, started one at a time so they never share the CPU:

* ``hotswap``: ``python -m hotswap_runtime`` (REST on uvicorn, gRPC on its own port);
* ``hotswap-batching``: the same with dynamic batching on (max batch 32), measured at
  concurrency 32, where the targets ask for 1.5x the peer's throughput;
* ``kserve``: ``kserve.ModelServer`` serving a ``kserve.Model`` whose ``predict`` runs
  the same network (this file, ``--serve-kserve``), REST and gRPC;
* variants, named by suffixes in any order: ``-mmap1m`` (``HOTSWAP_MMAP_THRESHOLD_BYTES``
  at 1 MiB, the default before 32 MiB: every activation over 1 MiB a fresh mmap),
  ``-contiguous`` (``HOTSWAP_MEMORY_FORMAT=contiguous``: no channels-last) and
  ``-eager`` (``HOTSWAP_FREEZE=off``: the eager network, no frozen graph);
* ``hotswap-baseline`` (with ``--baseline REF``): the runtime of another commit of this
  repository (``git archive REF``), default settings, measured beside ``hotswap`` in the
  same run so that a change's cost is read from one run: ``baseline_ratio`` per point;
* TorchServe and Triton are not measured: see ``TORCHSERVE`` and ``TRITON`` below.

Points: protocol (REST JSON, REST binary tensor data, gRPC raw contents) x concurrency
(1, 8, 32 closed-loop clients) x batch (1, 8 samples per request). Per point:
throughput (requests/s and samples/s), p50 and p99 latency (ms), errors, and for
hotswap the ratios to kserve at the same point. For hotswap at batch 8 the mean
seconds per phase (decode, queue, forward, encode) from the runtime's
``hotswap_request_phase_seconds``. Also: ``/v2/health/live`` p99 while a 64 MB JSON
request is decoded.

The last line printed is one JSON object: the summary (targets met, worst ratios).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import REPO, Runtime, free_port, percentile, poll, terminate
from bench.profiles import profiled

MODEL = "resnet18"
SIZE = 64
TORCHSERVE = (
    "not measured: torchserve 0.12.0 (its last release, 2024) installs here and Java 17 "
    "is present, but its Open Inference Protocol gRPC service reads typed contents only "
    "(no raw_input_contents, what tritonclient and kserve clients send) and its REST path "
    "takes v2 JSON through the kservev2 envelope only, so it cannot serve this load "
    "generator's binary and raw points unchanged; not wired into this benchmark"
)

TRITON = (
    "not measured: the in-process tritonserver Python API ships only as wheels inside "
    "NGC containers (PyPI's tritonserver 0.0.1.dev0 is a placeholder whose install "
    "raises, pointing there), and no container registry is reachable here; "
    "tritonclient is used as a client in the tests"
)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.serve_kserve:
        _serve_kserve(args)
        return 0
    root = Path(tempfile.mkdtemp(prefix="hotswap-serving-"))
    try:
        result = Bench(args, root).run()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result["summary"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}))
    print(text)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 s windows, c=1 and 32 only")
    p.add_argument("--window", type=float, help="measured seconds per point (default 6)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every server")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--protocols", default="json,binary,grpc")
    p.add_argument(
        "--servers",
        default="hotswap,kserve,hotswap-batching",
        help="kserve, hotswap and its variants: hotswap-batching (max batch 32), -mmap1m "
        "(HOTSWAP_MMAP_THRESHOLD_BYTES=1 MiB), -contiguous (HOTSWAP_MEMORY_FORMAT), -eager "
        "(HOTSWAP_FREEZE=off), combined "
        "in any order (hotswap-mmap1m-contiguous-eager: the speed settings before 32 MiB, "
        "channels-last and frozen graphs)",
    )
    p.add_argument("--out", help="also write the full result here")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="sample each server's Python stacks (py-spy, bench/profiles.py) over each "
        "measured window into DIR; the result gets the top running frames per point",
    )
    p.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure this git commit's runtime as hotswap-baseline (before/after)",
    )
    p.add_argument("--serve-kserve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.window is None:
        args.window = 2.0 if args.quick else 6.0
    if args.quick:
        args.concurrency = "1,32"
    return args


# ---- request bodies ------------------------------------------------------------------


def _input(batch: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(0)
    return rng.random((batch, 3, SIZE, SIZE), dtype=np.float32).round(4)


def rest_json(batch: int) -> tuple[bytes, dict[str, str]]:
    x = _input(batch)
    body = {
        "id": "bench",
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
    }
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def rest_binary(batch: int) -> tuple[bytes, dict[str, str]]:
    x = _input(batch)
    head = {
        "id": "bench",
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(head).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(text)),
    }
    return text + x.tobytes(), headers


def grpc_message(batch: int, model: str) -> bytes:
    from hotswap_runtime.serving.grpc_v2 import inference_pb2 as pb

    x = _input(batch)
    request = pb.ModelInferRequest(model_name=model, id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


# ---- load generator ------------------------------------------------------------------


@dataclass
class Load:
    """Closed-loop clients, each on its own connection, sending one body as fast as
    answers come; records (start, end, ok) per request."""

    protocol: str
    target: str  # host:port
    path: str
    body: bytes
    headers: dict[str, str]
    clients: int
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def run(self, warm: float, window: float) -> list[tuple[float, float, bool]]:
        self.start()
        time.sleep(warm + window)  # the measuring window itself
        self.finish()
        return self.samples

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def finish(self) -> int:
        """Stop the clients; how many requests were answered."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return sum(1 for *_, ok in self.samples if ok)

    def _client(self) -> None:
        send = self._grpc_sender() if self.protocol == "grpc" else self._rest_sender()
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                ok = send()
            except Exception:
                ok = False
            end = time.perf_counter()
            with self._lock:
                self.samples.append((start, end, ok))
            if not ok:
                self._stop.wait(0.05)  # a failing server is not hammered in a tight loop

    def _rest_sender(self) -> Any:
        host, port = self.target.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)

        def send() -> bool:
            conn.request("POST", self.path, body=self.body, headers=self.headers)
            response = conn.getresponse()
            response.read()
            return response.status == 200

        return send

    def _grpc_sender(self) -> Any:
        import grpc

        channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", -1)]
        )
        call: Any = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        def send() -> bool:
            call(self.body, timeout=120)
            return True

        return send


def figures(samples: list[tuple[float, float, bool]], t0: float, window: float) -> dict[str, Any]:
    inside = [(s, e, ok) for s, e, ok in samples if e >= t0 and e <= t0 + window]
    good = [(e - s) * 1000 for s, e, ok in inside if ok]
    return {
        "_good": good,
        "requests_per_s": round(len(good) / window, 2),
        "p50_ms": round(percentile(good, 50), 2),
        "p99_ms": round(percentile(good, 99), 2),
        "errors": sum(1 for *_, ok in inside if not ok),
        "requests": len(good),
    }


# ---- servers -------------------------------------------------------------------------


class Server:
    name = ""
    rest = ""  # host:port
    grpc = ""

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def pid(self) -> int | None:
        return None

    def metrics(self) -> str:
        return ""


BASELINE = "hotswap-baseline"
# Suffixes of a hotswap server's name, and the settings each adds.
VARIANTS = {
    "batching": {"HOTSWAP_MAX_BATCH_SIZE": "32", "HOTSWAP_MAX_QUEUE_DELAY_US": "2000"},
    "mmap1m": {"HOTSWAP_MMAP_THRESHOLD_BYTES": str(1 << 20)},
    "contiguous": {"HOTSWAP_MEMORY_FORMAT": "contiguous"},
    "eager": {"HOTSWAP_FREEZE": "off"},
}


class Hotswap(Server):
    def __init__(self, root: Path, threads: int, name: str = "hotswap") -> None:
        self.name = name
        variants = name.split("-")[1:]
        if not name.startswith("hotswap") or set(variants) - set(VARIANTS):
            raise SystemExit(f"unknown server {name!r} (variants: {', '.join(VARIANTS)})")
        env = {
            "HOTSWAP_MODEL_NAME": MODEL,
            "HOTSWAP_CONFIG_DIR": str(root / "config"),
            "HOTSWAP_CACHE_DIR": str(root / f"cache-{self.name}"),
            "HOTSWAP_FILE_ROOTS": str(root),
            "HOTSWAP_DEVICE": "cpu",
            "HOTSWAP_TORCH_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
            "HOTSWAP_API_WATCH": "false",
            "HOTSWAP_LOG_LEVEL": "warning",
        }
        for variant in variants:
            env |= VARIANTS[variant]
        self.runtime = Runtime(env, free_port(), root / f"{self.name}.log")
        self.rest = f"127.0.0.1:{self.runtime.port}"
        self.grpc = f"127.0.0.1:{self.runtime.grpc_port}"

    def start(self) -> None:
        self.runtime.start()

    def stop(self) -> None:
        self.runtime.stop()

    def pid(self) -> int | None:
        return self.runtime.process.pid if self.runtime.process else None

    def metrics(self) -> str:
        import httpx

        return httpx.get(self.runtime.url + "/metrics", timeout=10).text


class KServe(Server):
    name = "kserve"

    def __init__(self, root: Path, threads: int) -> None:
        self.root = root
        self.threads = threads
        self.port, self.grpc_port = free_port(), free_port()
        self.rest = f"127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        log = (self.root / "kserve.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-kserve",
                "--weights",
                str(self.root / "weights.safetensors"),
                "--port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port),
                "--threads",
                str(self.threads),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={"OMP_NUM_THREADS": str(self.threads), "PATH": "/usr/bin:/bin"},
        )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"kserve exited; see {self.root / 'kserve.log'}")
            url = f"http://{self.rest}/v2/models/{MODEL}/ready"
            return httpx.get(url, timeout=5).status_code == 200

        poll(ready, 120, "kserve to be ready", 0.1)

    def stop(self) -> None:
        terminate(self.process)

    def pid(self) -> int | None:
        return self.process.pid if self.process else None


def _serve_kserve(args: argparse.Namespace) -> None:
    """KServe's Python ModelServer with a Model wrapping the same network (a subprocess)."""
    import safetensors.torch
    import torch
    import torchvision
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

    torch.set_num_threads(args.threads)

    class ResNet(Model):  # type: ignore[misc]
        def load(self) -> bool:
            net = torchvision.models.get_model(MODEL, weights=None)
            net.load_state_dict(safetensors.torch.load_file(args.weights))
            self.net = net.eval()
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers: Any = None) -> InferResponse:
            x = torch.from_numpy(payload.inputs[0].as_numpy())
            with torch.inference_mode():
                y = self.net(x).numpy()
            out = InferOutput(name="output", shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
            return InferResponse(
                model_name=self.name,
                infer_outputs=[out],
                response_id=payload.id,
                use_binary_outputs=payload.use_binary_outputs,
            )

    model = ResNet(MODEL)
    model.load()
    ModelServer(http_port=args.port, grpc_port=args.grpc_port).start([model])


def write_model(root: Path) -> None:
    """resnet18 with random weights (seed 0) as safetensors under ``root``, and the
    model.json every hotswap server reads from ``root/config``."""
    import hashlib

    import safetensors.torch
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(MODEL, weights=None)
    path = root / "weights.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    doc = {
        "name": MODEL,
        "generation": 1,
        "stable": {
            "revision": 1,
            "model": {
                "architecture": f"torchvision/{MODEL}",
                "args": {},
                "inputShape": [3, SIZE, SIZE],
            },
            "checkpoint": {"uri": f"file://{path}", "sha256": sha},
        },
    }
    (root / "config").mkdir()
    (root / "config" / "model.json").write_text(json.dumps(doc))


# ---- the run -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.concurrency = [int(c) for c in args.concurrency.split(",")]
        self.batches = [int(b) for b in args.batches.split(",")]
        self.protocols = args.protocols.split(",")

    def run(self) -> dict[str, Any]:
        write_model(self.root)
        servers = self._servers()
        points: list[dict[str, Any]] = []
        phases: dict[str, Any] = {}
        health: dict[str, Any] = {}
        try:
            for server in servers:  # idle servers take no CPU from the one measured
                server.start()
            for protocol in self.protocols:
                for batch in self.batches:
                    for clients in self.concurrency:
                        here = [s for s in servers if "batching" not in s.name or clients == 32]
                        points += self._interleaved(here, protocol, batch, clients, phases)
            plain = [s for s in servers if s.name == "hotswap"]
            if plain:
                health = self._health_during_decode(plain[0])
        finally:
            for server in servers:
                server.stop()
        return self._result(points, phases, health)

    def _interleaved(
        self,
        servers: list[Server],
        protocol: str,
        batch: int,
        clients: int,
        phases: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Each server twice, in the order A B B A, so that load from outside this
        benchmark (a shared machine) falls on every server alike."""
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
        for server in [*servers, *reversed(servers)]:
            runs[server.name].append(self._point(server, protocol, batch, clients, phases))
        points = []
        for first, second in runs.values():
            point = {k: v for k, v in first.items() if k not in ("_good",)}
            good = first["_good"] + second["_good"]
            window = 2 * self.args.window
            point.update(
                requests_per_s=round(len(good) / window, 2),
                samples_per_s=round(len(good) / window * batch, 2),
                p50_ms=round(percentile(good, 50), 2),
                p99_ms=round(percentile(good, 99), 2),
                errors=first["errors"] + second["errors"],
                requests=len(good),
            )
            points.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)
        return points

    def _servers(self) -> list[Server]:
        servers = [self._server(name) for name in self.args.servers.split(",")]
        if self.args.baseline:
            servers.append(self._baseline(self.args.baseline))
        return servers

    def _server(self, name: str) -> Server:
        if name == "kserve":
            return KServe(self.root, self.args.threads)
        return Hotswap(self.root, self.args.threads, name)

    def _baseline(self, ref: str) -> Server:
        """``hotswap`` as commit ``ref`` has it: its sources unpacked beside the run."""
        tree = self.root / "baseline"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "runtime", "contract", "devcluster"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        server = Hotswap(self.root, self.args.threads)
        server.name = BASELINE
        server.runtime.source = tree
        server.runtime.env["HOTSWAP_CACHE_DIR"] = str(self.root / "cache-baseline")
        return server

    def _point(
        self, server: Server, protocol: str, batch: int, clients: int, phases: dict[str, Any]
    ) -> dict[str, Any]:
        path = f"/v2/models/{MODEL}/infer"
        if protocol == "grpc":
            body, target = grpc_message(batch, MODEL), server.grpc
            headers: dict[str, str] = {}
        else:
            body, headers = rest_json(batch) if protocol == "json" else rest_binary(batch)
            target = server.rest
        before = server.metrics() if batch == 8 else ""
        warm = 1.0
        load = Load(protocol, target, path, body, headers, clients)
        t_start = time.perf_counter()
        name = f"{server.name}-{protocol}-c{clients}-b{batch}"
        with profiled(self.args.profile, server.pid(), name, warm, self.args.window) as top:
            samples = load.run(warm, self.args.window)
        point = {
            "server": server.name,
            "protocol": protocol,
            "concurrency": clients,
            "batch": batch,
            **figures(samples, t_start + warm, self.args.window),
        }
        point["samples_per_s"] = round(point["requests_per_s"] * batch, 2)
        if top:
            point["profile_top"] = top
        if before:
            phases[f"{server.name}/{protocol}/c{clients}"] = _phase_means(before, server.metrics())
        return point

    def _health_during_decode(self, server: Server) -> dict[str, Any]:
        """``/v2/health/live`` latencies while a 64 MB JSON body is decoded. Its shape
        does not fit the model (one column too many), so the answer is a 400 after the
        whole body is decoded and nothing else (no forward pass) runs meanwhile."""
        count = 16_000_000
        rows = count // (3 * SIZE * (SIZE + 1))
        count = rows * 3 * SIZE * (SIZE + 1)
        data = b",".join([b"0.25"] * count)
        head = f'{{"inputs":[{{"name":"input","shape":[{rows},3,{SIZE},{SIZE + 1}],'
        body = head.encode() + b'"datatype":"FP32","data":[' + data + b"]}]}"
        host, port = server.rest.split(":")
        result: dict[str, Any] = {}

        def post() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=300)
            start = time.perf_counter()
            conn.request("POST", f"/v2/models/{MODEL}/infer", body=body)
            response = conn.getresponse()
            response.read()
            result["status"] = response.status
            result["seconds"] = time.perf_counter() - start

        thread = threading.Thread(target=post)
        probe = http.client.HTTPConnection(host, int(port), timeout=30)
        latencies = []
        thread.start()
        while thread.is_alive():
            start = time.perf_counter()
            probe.request("GET", "/v2/health/live")
            probe.getresponse().read()
            latencies.append((time.perf_counter() - start) * 1000)
        thread.join()
        return {
            "body_mb": round(len(body) / 1e6, 1),
            "infer_status": result.get("status"),
            "infer_seconds": round(result.get("seconds", float("nan")), 2),
            "probes": len(latencies),
            "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "max_ms": round(max(latencies), 2),
        }

    def _result(
        self, points: list[dict[str, Any]], phases: dict[str, Any], health: dict[str, Any]
    ) -> dict[str, Any]:
        peer = {
            (p["protocol"], p["concurrency"], p["batch"]): p
            for p in points
            if p["server"] == "kserve"
        }
        for point in points:
            other = peer.get((point["protocol"], point["concurrency"], point["batch"]))
            if point["server"] == "kserve" or other is None:
                continue
            point["throughput_ratio"] = _ratio(point["requests_per_s"], other["requests_per_s"])
            point["p99_ratio"] = _ratio(point["p99_ms"], other["p99_ms"])
        _against_baseline(points)
        summary: dict[str, Any] = {
            "model": f"{MODEL} 3x{SIZE}x{SIZE} cpu, {self.args.threads} torch thread(s)",
            "points": len(points),
            "errors": sum(p["errors"] for p in points),
        }
        for name in sorted({p["server"] for p in points} - {"kserve"}):
            summary[name] = self._entry(name, [p for p in points if p["server"] == name])
        summary["health_p99_ms_during_64mb_json_decode"] = health.get("p99_ms")
        summary["torchserve"] = TORCHSERVE
        summary["triton"] = TRITON
        return {"points": points, "phases_batch8": phases, "health": health, "summary": summary}

    @staticmethod
    def _entry(name: str, mine: list[dict[str, Any]]) -> dict[str, Any]:
        """One server's line of the summary: its ratios to the peer and to the baseline,
        where they were measured. A failed request misses every target."""
        clean = all(p["errors"] == 0 for p in mine)
        entry: dict[str, Any] = {"errors": sum(p["errors"] for p in mine)}
        peer = [p for p in mine if "throughput_ratio" in p]
        if peer:
            entry |= {
                "throughput_ge_peer_everywhere": clean
                and all(p["throughput_ratio"] >= 1 for p in peer),
                "p99_le_peer_everywhere": clean and all(p["p99_ratio"] <= 1 for p in peer),
                "worst_throughput_ratio": min(p["throughput_ratio"] for p in peer),
                "worst_p99_ratio": max(p["p99_ratio"] for p in peer),
                "misses": [
                    f"{p['protocol']}/c{p['concurrency']}/b{p['batch']}"
                    for p in peer
                    if p["throughput_ratio"] < 1 or p["p99_ratio"] > 1 or p["errors"]
                ],
            }
            if "batching" in name:
                entry["target_1_5x_met"] = clean and all(p["throughput_ratio"] >= 1.5 for p in peer)
        against = [p["baseline_ratio"] for p in mine if "baseline_ratio" in p]
        if against:
            entry["worst_throughput_vs_baseline"] = min(against)
            entry["within_3pct_of_baseline_everywhere"] = clean and min(against) >= 0.97
        return entry


def _against_baseline(points: list[dict[str, Any]]) -> None:
    """``baseline_ratio``: each hotswap server's throughput (batching aside) over
    hotswap-baseline's at each point."""
    base = {
        (p["protocol"], p["concurrency"], p["batch"]): p for p in points if p["server"] == BASELINE
    }
    for point in points:
        other = base.get((point["protocol"], point["concurrency"], point["batch"]))
        name = point["server"]
        plain = name.startswith("hotswap") and "batching" not in name and name != BASELINE
        if plain and other is not None:
            point["baseline_ratio"] = _ratio(point["requests_per_s"], other["requests_per_s"])


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


_PHASE = re.compile(r'^hotswap_request_phase_seconds_(sum|count)\{phase="(\w+)"\} (\S+)$', re.M)


def _phase_means(before: str, after: str) -> dict[str, float]:
    """Mean milliseconds per request in each phase between two /metrics scrapes."""

    def read(text: str) -> dict[tuple[str, str], float]:
        return {(kind, phase): float(value) for kind, phase, value in _PHASE.findall(text)}

    a, b = read(before), read(after)
    means = {}
    for (kind, phase), value in b.items():
        if kind != "sum":
            continue
        count = b[("count", phase)] - a.get(("count", phase), 0.0)
        if count:
            means[f"{phase}_ms"] = round((value - a.get(("sum", phase), 0.0)) / count * 1000, 3)
    return means


if __name__ == "__main__":
    sys.exit(main())
