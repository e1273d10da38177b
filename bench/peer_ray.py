"""The peer for bench/swap.py: Ray Serve serving the same model, updated in place.

A local Ray cluster (``address="local"``: never one named by ``RAY_ADDRESS``; no
dashboard; a 256 MiB object store; workers not reniced) runs one Serve application,
``bench.peer_ray:build``, behind Serve's own HTTP proxy on loopback. Its one deployment
has as many replicas as hotswap's bench runs runtimes (one). Each replica decodes the
same KServe v2 JSON body with hotswap's codec, runs torchvision's model with one torch
thread and one inference thread (the runtime's CPU settings), and answers with
``model_version``, as the runtime does.

An update is Ray's documented in-place update, a *lightweight config update*: the
application config is deployed again with a new ``user_config`` (what ``serve deploy``
sends to the controller, here straight through the Serve client, as the dashboard is
off); Serve keeps the replica process and calls its ``reconfigure(user_config)``, which
loads the checkpoint file the config names. Like any Ray user's ``reconfigure`` it checks
nothing beyond what ``load_state_dict`` does (no sha256, no forward pass on the new
weights): the model is built fresh (on the meta device, then given the loaded tensors)
and replaces the serving one by one assignment, so a request sees either the old or the
new weights. ``GET /`` says which checkpoint a replica
serves (``model_version``) and from which process (``pid``).

``ray`` is the optional ``peer`` extra (``pip install -e '.[peer]'``, ``make bench-peer``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import ray
import torch
from ray import serve
from ray.serve.schema import ServeDeploySchema
from starlette.requests import Request
from starlette.responses import Response

from bench._common import REPO, Swap, free_port, poll

APP = "peer"
DEPLOYMENT = "Replica"
OBJECT_STORE_BYTES = 256 * 2**20


class Model:
    """One Ray Serve replica of a torchvision model (hotswap's codec on the wire)."""

    def __init__(self, model: str, input_shape: list[int]) -> None:
        torch.set_num_threads(1)
        self.name = model
        self.input_shape = tuple(input_shape)
        self.current: tuple[torch.nn.Module, str] | None = None
        self._codec = ThreadPoolExecutor(2, thread_name_prefix="codec")
        self._infer = ThreadPoolExecutor(1, thread_name_prefix="infer")

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Ray's in-place update: load the checkpoint ``user_config`` names."""
        import safetensors.torch
        import torchvision

        # Built on the meta device and given the loaded tensors (assign=True): no random
        # init and no copy, the cheapest fresh model torch offers.
        with torch.device("meta"):
            model = torchvision.models.get_model(self.name, weights=None)
        model.load_state_dict(safetensors.torch.load_file(config["checkpoint"]), assign=True)
        model.eval()
        self.current = (model, str(config["version"]))

    async def __call__(self, request: Request) -> Response:
        current = self.current
        if current is None:
            return Response(b'{"error":"no model"}', status_code=503)
        model, version = current
        if request.method == "GET":
            return _json({"model_version": version, "pid": os.getpid()})
        from hotswap_runtime.serving.codec import check_shape, decode_rest, encode_rest

        loop = asyncio.get_running_loop()
        body = await request.body()
        decoded = await loop.run_in_executor(self._codec, decode_rest, body, None)
        check_shape(decoded.tensor, self.input_shape)
        output = await loop.run_in_executor(self._infer, _forward, model, decoded.tensor)
        text, _ = await loop.run_in_executor(
            self._codec, encode_rest, self.name, version, output, decoded
        )
        return Response(text, media_type="application/json")


# A class decorator's result is invisible to mypy; the deployment is made by a call.
Replica = serve.deployment(name=DEPLOYMENT)(Model)


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(x)
        return out


def _json(doc: dict[str, Any]) -> Response:
    return Response(orjson.dumps(doc), media_type="application/json")


def build(args: dict[str, Any]) -> Any:
    """The application builder ``import_path`` names."""
    return Replica.bind(str(args["model"]), [int(d) for d in args["input_shape"]])


class RayPeer:
    """A local Ray cluster serving ``model``; ``update()`` moves it to the next checkpoint
    of ``checkpoints`` (the files hotswap swaps through) and waits until it serves it."""

    replicas = 1

    def __init__(self, model: str, checkpoints: list[Path], input_shape: list[int]) -> None:
        self.model = model
        self.checkpoints = checkpoints
        self.input_shape = input_shape
        self.port = free_port()
        self.revision = 0
        self.pids: set[int] = set()
        self._tmp: Path | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def describe(self) -> dict[str, Any]:
        return {
            "system": "ray-serve",
            "ray_version": ray.__version__,
            "replicas": self.replicas,
            "update": "lightweight config update: user_config -> reconfigure()",
        }

    def start(self) -> None:
        # A short path: Ray puts its unix sockets under it (the kernel allows 107 bytes).
        self._tmp = Path(tempfile.mkdtemp(prefix="ray-"))
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray renices its workers by 15 by default: on a shared machine the replica would
        # then lose the CPU to everything else, which hotswap's runtime (run at the
        # bench's niceness) does not. Same niceness for both.
        os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray's spelling)
        # The replica imports bench.peer_ray and hotswap_runtime: workers inherit this.
        paths = [str(REPO), str(REPO / "runtime"), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            _temp_dir=str(self._tmp),
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self._client = httpx.Client(timeout=10)
        self.update(timeout=300)  # the first deploy builds the replica

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def update(self, timeout: float = 120) -> Swap:
        """Deploy the next checkpoint as ``user_config``; the time until the replica
        answers with it."""
        self.revision += 1
        version = str(self.revision)
        checkpoint = self.checkpoints[(self.revision - 1) % len(self.checkpoints)]
        start = time.perf_counter()
        serve.context._get_global_client().deploy_apps(self._config(checkpoint, version))
        served = poll(
            lambda: (m := self._served())["model_version"] == version and m,
            timeout,
            f"Ray Serve replica on version {version}",
        )
        end = time.perf_counter()
        self.pids.add(int(served["pid"]))
        return {"start": start, "end": end, "visible_s": end - start}

    def _served(self) -> dict[str, Any]:
        assert self._client is not None
        response = self._client.get(self.url)
        if response.status_code != 200:
            return {"model_version": None}
        body: dict[str, Any] = response.json()
        return body

    def _config(self, checkpoint: Path, version: str) -> Any:
        deployment = {
            "name": DEPLOYMENT,
            "num_replicas": self.replicas,
            "ray_actor_options": {"num_cpus": 1},
            "user_config": {"checkpoint": str(checkpoint), "version": version},
        }
        app = {
            "name": APP,
            "route_prefix": "/",
            "import_path": "bench.peer_ray:build",
            "args": {"model": self.model, "input_shape": self.input_shape},
            "deployments": [deployment],
        }
        return ServeDeploySchema.parse_obj(
            {"http_options": {"host": "127.0.0.1", "port": self.port}, "applications": [app]}
        )
