"""Runtime settings: every ``hotswap-runtime --flag`` defaults to its environment variable.

The environment variables are the runtime pod interface of docs/architecture.md; the
operator sets them on the Deployment. A few extra knobs (size limit, resync period,
swap mode, torch threads) have variables too so tests and benchmarks can set them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hotswap_contract.policy import (
    DEFAULT_ARCHITECTURES,
    DEFAULT_FILE_ROOTS,
    PolicyError,
    check_architecture_entries,
    normalized_root,
    parse_networks,
    split_list,
)
from hotswap_contract.wire import (
    GRPC_PORT,
    HTTP_PORT,
    MAX_BATCH_SIZE,
    MAX_FORWARD_BATCH,
    MAX_QUEUE_DELAY_US,
    MIN_FORWARD_MEMORY_BYTES,
    PEER_PORT,
)
from hotswap_runtime.budget import decode_cost

DEFAULT_CACHE_MAX_BYTES = 8 * 1024**3
DEFAULT_MAX_CHECKPOINT_BYTES = 4 * 1024**3
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024**2
DEFAULT_REQUEST_MEMORY_BYTES = 1024**3
# forward passes (swap/footprint.py)
DEFAULT_MAX_FORWARD_BATCH = 1024
DEFAULT_FORWARD_MEMORY_BYTES = 1024**3
DEVICES = ("auto", "cuda", "cpu")
SWAP_MODES = ("auto", "standby", "inplace")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")  # swap/memory_format.py
FREEZE_SETTINGS = ("auto", "off")  # swap/frozen.py
_OFF = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Everything the runtime process is configured with."""

    model_name: str
    config_dir: Path | None = None
    configmap: str | None = None
    cache_dir: Path = Path("/var/cache/hotswap")
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES
    device: str = "auto"
    host: str = "127.0.0.1"
    loopback: bool = True  # REST and gRPC on 127.0.0.1 too (serving/listen.py)
    port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    secrets_dir: Path | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_uid: str | None = None
    kubeconfig: Path | None = None
    resync_seconds: float = 30.0
    swap_mode: str = "auto"
    memory_format: str = "auto"
    freeze: str = "auto"
    torch_threads: int | None = None
    api_watch: bool = True
    log_level: str = "info"
    allowed_architectures: tuple[str, ...] = DEFAULT_ARCHITECTURES
    file_roots: tuple[str, ...] = DEFAULT_FILE_ROOTS
    fetch_allowed_networks: tuple[str, ...] = ()
    fetch_proxy: str | None = None
    fetch_idle_seconds: float = 30.0
    max_model_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    request_memory_bytes: int = DEFAULT_REQUEST_MEMORY_BYTES
    max_batch_size: int = 1
    max_queue_delay_us: int = 0
    infer_workers: int = 1
    codec_threads: int = 2
    mmap_threshold_bytes: int = 32 << 20
    drain_seconds: float = 5.0
    # Slow senders and a spent request memory (budget.py, serving/body.py).
    request_wait_seconds: float = 5.0
    body_seconds: float = 60.0
    body_grace_seconds: float = 5.0
    body_min_rate: float = 64 << 10
    overload_unready_seconds: float = 10.0
    max_forward_batch: int = DEFAULT_MAX_FORWARD_BATCH
    forward_memory_bytes: int = DEFAULT_FORWARD_MEMORY_BYTES
    # REST request heads and connections (serving/head.py).
    head_bytes: int = 64 << 10
    head_seconds: float = 10.0
    keep_alive_seconds: int = 5
    max_connections: int = 1000
    # gRPC's own limits (serving/grpc_server.py; docs/security.md, "Serving: gRPC")
    grpc_max_connections: int = 128
    grpc_max_streams: int = 32
    grpc_receiving: int = 4
    grpc_receive_seconds: float = 30.0
    grpc_min_ping_seconds: float = 10.0
    # Peer transfer (checkpoint/peers; docs/architecture.md, "Fleet distribution")
    peer_token_file: Path | None = None
    peers_configmap: str | None = None
    peer_port: int = PEER_PORT
    peer_idle_seconds: float = 30.0
    peer_wait_seconds: float = 600.0
    peer_max_connections: int = 64
    peer_max_uploads: int = 4
    peer_max_bytes_per_second: int = 1 << 30


# flag -> (environment variable, type, help)
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "model_name": ("HOTSWAP_MODEL_NAME", str, "model name served at /v2/models/<name>"),
    "config_dir": ("HOTSWAP_CONFIG_DIR", Path, "folder where model.json is mounted"),
    "configmap": ("HOTSWAP_CONFIGMAP", str, "ConfigMap name for the API watch"),
    "cache_dir": ("HOTSWAP_CACHE_DIR", Path, "checkpoint cache folder"),
    "cache_max_bytes": ("HOTSWAP_CACHE_MAX_BYTES", int, "cache size bound in bytes"),
    "max_checkpoint_bytes": ("HOTSWAP_MAX_CHECKPOINT_BYTES", int, "largest checkpoint"),
    "device": ("HOTSWAP_DEVICE", str, "auto, cuda or cpu"),
    "host": ("HOTSWAP_HOST", str, "listen address (a pod: its IP); see --no-loopback"),
    "port": ("HOTSWAP_PORT", int, "listen port (REST)"),
    "grpc_port": ("HOTSWAP_GRPC_PORT", int, "gRPC listen port; 0 turns gRPC off"),
    "secrets_dir": ("HOTSWAP_SECRETS_DIR", Path, "folder of mounted Secrets"),
    "pod_name": ("POD_NAME", str, "this pod's name (reports, candidate selection)"),
    "pod_namespace": ("POD_NAMESPACE", str, "namespace of the ModelDeployment"),
    "pod_uid": ("POD_UID", str, "this pod's uid (owner of its ModelReplica report)"),
    "kubeconfig": ("KUBECONFIG", Path, "kubeconfig outside a cluster"),
    "resync_seconds": ("HOTSWAP_RESYNC_SECONDS", float, "periodic re-read of model.json"),
    "swap_mode": ("HOTSWAP_SWAP_MODE", str, "auto, standby or inplace"),
    "memory_format": (
        "HOTSWAP_MEMORY_FORMAT",
        str,
        "auto (channels-last for 2-D convolutional networks on the CPU), contiguous or "
        "channels_last",
    ),
    "freeze": (
        "HOTSWAP_FREEZE",
        str,
        "auto (2-D convolutional float32 networks on the CPU serve a frozen graph) or off",
    ),
    "torch_threads": ("HOTSWAP_TORCH_THREADS", int, "torch intra-op threads"),
    "log_level": ("HOTSWAP_LOG_LEVEL", str, "logging level"),
    "allowed_architectures": (
        "HOTSWAP_ALLOWED_ARCHITECTURES",
        split_list,
        "comma separated architectures model.json may name (policy.py)",
    ),
    "file_roots": ("HOTSWAP_FILE_ROOTS", split_list, "folders file:// checkpoints may lie in"),
    "fetch_proxy": (
        "HOTSWAP_FETCH_PROXY",
        str,
        "HTTP proxy for http(s):// and s3:// downloads (a node's P2P daemon, e.g. Dragonfly)",
    ),
    "fetch_allowed_networks": (
        "HOTSWAP_FETCH_ALLOWED_NETWORKS",
        split_list,
        "CIDRs fetches may reach although loopback, link-local or private",
    ),
    "peer_token_file": (
        "HOTSWAP_PEER_TOKEN_FILE",
        Path,
        "the ModelDeployment's peer credential; unset: no peer transfer",
    ),
    "peers_configmap": ("HOTSWAP_PEERS_CONFIGMAP", str, "ConfigMap listing the peers"),
    "peer_port": ("HOTSWAP_PEER_PORT", int, "port serving verified cache entries to peers"),
    "peer_idle_seconds": (
        "HOTSWAP_PEER_IDLE_SECONDS",
        float,
        "a peer that sends nothing for this long is dropped for the checkpoint",
    ),
    "peer_wait_seconds": (
        "HOTSWAP_PEER_WAIT_SECONDS",
        float,
        "longest wait for peers to hold a file before reading the store",
    ),
    "peer_max_connections": ("HOTSWAP_PEER_MAX_CONNECTIONS", int, "peer port connections"),
    "peer_max_uploads": ("HOTSWAP_PEER_MAX_UPLOADS", int, "files sent to peers at once"),
    "peer_max_bytes_per_second": (
        "HOTSWAP_PEER_MAX_BYTES_PER_SECOND",
        int,
        "bytes per second sent to peers, all uploads together (0: unbounded)",
    ),
    "fetch_idle_seconds": (
        "HOTSWAP_FETCH_IDLE_SECONDS",
        float,
        "a fetch fails after this many seconds without a byte",
    ),
    "max_model_bytes": ("HOTSWAP_MAX_MODEL_BYTES", int, "largest model (parameters and buffers)"),
    "max_request_bytes": (
        "HOTSWAP_MAX_REQUEST_BYTES",
        int,
        "largest infer request body or gRPC message (413 past it)",
    ),
    "request_memory_bytes": (
        "HOTSWAP_REQUEST_MEMORY_BYTES",
        int,
        "memory that requests being received and decoded may hold at once",
    ),
    "max_batch_size": (
        "HOTSWAP_MAX_BATCH_SIZE",
        int,
        "dynamic batching: most samples per forward pass (1: off)",
    ),
    "max_queue_delay_us": (
        "HOTSWAP_MAX_QUEUE_DELAY_US",
        int,
        "dynamic batching: microseconds a batch waits for more requests",
    ),
    "infer_workers": ("HOTSWAP_INFER_WORKERS", int, "threads running forward passes"),
    "codec_threads": ("HOTSWAP_CODEC_THREADS", int, "threads decoding and encoding requests"),
    "mmap_threshold_bytes": (
        "HOTSWAP_MMAP_THRESHOLD_BYTES",
        int,
        "allocations from this size up are mmapped and given back when freed; smaller "
        "ones reuse heap memory (faster CPU forward passes; the heap keeps up to 8 times "
        "this much free)",
    ),
    "drain_seconds": (
        "HOTSWAP_DRAIN_SECONDS",
        float,
        "after SIGTERM: seconds of not-ready while still serving, before the listener closes",
    ),
    # Slow senders and a spent request memory.
    "request_wait_seconds": (
        "HOTSWAP_REQUEST_WAIT_SECONDS",
        float,
        "seconds a request may wait for request memory in all, then 503 / RESOURCE_EXHAUSTED",
    ),
    "body_seconds": ("HOTSWAP_BODY_SECONDS", float, "a REST body must arrive within (408)"),
    "body_grace_seconds": (
        "HOTSWAP_BODY_GRACE_SECONDS",
        float,
        "seconds a REST body may take before HOTSWAP_BODY_MIN_RATE counts",
    ),
    "body_min_rate": (
        "HOTSWAP_BODY_MIN_RATE",
        float,
        "bytes a second a REST body must average after the grace (408 below it)",
    ),
    "overload_unready_seconds": (
        "HOTSWAP_OVERLOAD_UNREADY_SECONDS",
        float,
        "readiness turns false after requests were refused this long with none getting "
        "through (0: never)",
    ),
    "max_forward_batch": (
        "HOTSWAP_MAX_FORWARD_BATCH",
        int,
        "most samples in one forward pass; larger requests run in several passes",
    ),
    "forward_memory_bytes": (
        "HOTSWAP_FORWARD_MEMORY_BYTES",
        int,
        "memory the inference workers' forward passes and split answers may hold at once "
        "(sets the forward batch from each model's activations, sized at load)",
    ),
    # REST request heads and connections.
    "head_bytes": ("HOTSWAP_HEAD_BYTES", int, "largest REST request line and headers (431)"),
    "head_seconds": (
        "HOTSWAP_HEAD_SECONDS",
        float,
        "a REST connection must send a whole request head within (408), from its opening "
        "or its last response",
    ),
    "keep_alive_seconds": (
        "HOTSWAP_KEEP_ALIVE_SECONDS",
        int,
        "a REST connection with no request under way is closed after this many idle seconds",
    ),
    "max_connections": (
        "HOTSWAP_MAX_CONNECTIONS",
        int,
        "REST connections open at once: at this many requests are answered 503, and "
        "connections beyond it closed",
    ),
    "grpc_max_connections": (
        "HOTSWAP_GRPC_MAX_CONNECTIONS",
        int,
        "gRPC connections open at once; more are closed as they come",
    ),
    "grpc_max_streams": ("HOTSWAP_GRPC_MAX_STREAMS", int, "gRPC calls at once per connection"),
    "grpc_receiving": (
        "HOTSWAP_GRPC_RECEIVING",
        int,
        "gRPC messages arriving at once (each up to HOTSWAP_MAX_REQUEST_BYTES); others wait",
    ),
    "grpc_receive_seconds": (
        "HOTSWAP_GRPC_RECEIVE_SECONDS",
        float,
        "a gRPC message not whole this many seconds after it began to arrive is refused",
    ),
    "grpc_min_ping_seconds": (
        "HOTSWAP_GRPC_MIN_PING_SECONDS",
        float,
        "clients pinging more often are disconnected (keepalive enforcement)",
    ),
}


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotswap-runtime",
        description="Serve a PyTorch model over Open Inference Protocol v2 and hot-swap it.",
    )
    defaults = Settings(model_name="")
    for field, (var, kind, text) in _FLAGS.items():
        raw = env.get(var)
        default = kind(raw) if raw not in (None, "") else getattr(defaults, field)
        parser.add_argument(
            "--" + field.replace("_", "-"), type=kind, default=default, help=f"{text} (${var})"
        )
    _switch(
        parser,
        env,
        "api_watch",
        "HOTSWAP_API_WATCH",
        "do not watch the ConfigMap through the Kubernetes API "
        "(default: on unless $HOTSWAP_API_WATCH is false, 0 or no)",
    )
    _switch(
        parser,
        env,
        "loopback",
        "HOTSWAP_LOOPBACK",
        "serve REST and gRPC on --host only, not also on 127.0.0.1 for kubectl "
        "port-forward (default: also unless $HOTSWAP_LOOPBACK is false, 0 or no)",
    )
    return parser


def _switch(
    parser: argparse.ArgumentParser, env: Mapping[str, str], dest: str, var: str, text: str
) -> None:
    """`--no-<dest>`: on unless `var` says false, 0, no or off."""
    parser.add_argument(
        "--no-" + dest.replace("_", "-"),
        dest=dest,
        action="store_false",
        default=env.get(var, "true").strip().lower() not in _OFF,
        help=text,
    )


def load_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from command-line flags, falling back to environment variables."""
    env = os.environ if env is None else env
    args = _parser(env).parse_args(argv)
    settings = Settings(**vars(args))
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not settings.model_name:
        raise SystemExit("hotswap-runtime: set --model-name or HOTSWAP_MODEL_NAME")
    if settings.device not in DEVICES:
        raise SystemExit(f"hotswap-runtime: device {settings.device!r} is not one of {DEVICES}")
    if settings.swap_mode not in SWAP_MODES:
        raise SystemExit(f"hotswap-runtime: swap mode {settings.swap_mode!r} not in {SWAP_MODES}")
    if settings.memory_format not in MEMORY_FORMATS:
        raise SystemExit(
            f"hotswap-runtime: HOTSWAP_MEMORY_FORMAT {settings.memory_format[:40]!r} not in "
            f"{MEMORY_FORMATS}"
        )
    if settings.freeze not in FREEZE_SETTINGS:
        raise SystemExit(
            f"hotswap-runtime: HOTSWAP_FREEZE {settings.freeze[:40]!r} not in {FREEZE_SETTINGS}"
        )
    try:
        check_architecture_entries(settings.allowed_architectures)
        parse_networks(settings.fetch_allowed_networks)
        for root in settings.file_roots:
            normalized_root(root)
    except PolicyError as exc:
        raise SystemExit(f"hotswap-runtime: {exc}") from None
    if settings.drain_seconds < 0:
        raise SystemExit("hotswap-runtime: HOTSWAP_DRAIN_SECONDS must not be negative")
    if settings.fetch_proxy and not _is_proxy_url(settings.fetch_proxy):
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_FETCH_PROXY must be an http:// or https:// URL "
            "(scheme, host and port, e.g. http://127.0.0.1:65001)"
        )
    if settings.fetch_idle_seconds <= 0:
        raise SystemExit("hotswap-runtime: HOTSWAP_FETCH_IDLE_SECONDS must be positive")
    _check_serving(settings)
    _check_slow_senders(settings)
    _check_heads(settings)
    _check_peers(settings)


def _check_peers(s: Settings) -> None:
    if not 0 < s.peer_port < 65536:
        raise SystemExit("hotswap-runtime: HOTSWAP_PEER_PORT must be 1..65535")
    if s.peer_idle_seconds <= 0 or s.peer_wait_seconds < 0:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_PEER_IDLE_SECONDS must be positive and "
            "HOTSWAP_PEER_WAIT_SECONDS not negative"
        )
    if min(s.peer_max_connections, s.peer_max_uploads) < 1 or s.peer_max_bytes_per_second < 0:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_PEER_MAX_CONNECTIONS and HOTSWAP_PEER_MAX_UPLOADS must be "
            "at least 1, HOTSWAP_PEER_MAX_BYTES_PER_SECOND not negative"
        )


def _check_serving(s: Settings) -> None:
    if not 1 <= s.max_batch_size <= MAX_BATCH_SIZE:
        raise SystemExit(f"hotswap-runtime: HOTSWAP_MAX_BATCH_SIZE must be 1..{MAX_BATCH_SIZE}")
    if not 0 <= s.max_queue_delay_us <= MAX_QUEUE_DELAY_US:
        raise SystemExit(
            f"hotswap-runtime: HOTSWAP_MAX_QUEUE_DELAY_US must be 0..{MAX_QUEUE_DELAY_US}"
        )
    if s.infer_workers < 1 or s.codec_threads < 1:
        raise SystemExit("hotswap-runtime: HOTSWAP_INFER_WORKERS and _CODEC_THREADS must be >= 1")
    if not 1 << 17 <= s.mmap_threshold_bytes <= 1 << 25:
        raise SystemExit("hotswap-runtime: HOTSWAP_MMAP_THRESHOLD_BYTES must be 128 KiB..32 MiB")
    if not 0 <= s.grpc_port <= 65535:
        raise SystemExit("hotswap-runtime: HOTSWAP_GRPC_PORT must be 0..65535")
    _check_forward(s)
    _check_grpc(s)
    floor = decode_cost(s.max_request_bytes, 0)
    if s.max_request_bytes < 1 or s.request_memory_bytes < floor:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_REQUEST_MEMORY_BYTES must hold at least what decoding "
            f"one binary request of HOTSWAP_MAX_REQUEST_BYTES takes ({floor} bytes)"
        )


def _check_slow_senders(s: Settings) -> None:
    if s.request_wait_seconds <= 0 or s.body_seconds <= 0 or s.body_min_rate <= 0:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_REQUEST_WAIT_SECONDS, HOTSWAP_BODY_SECONDS and "
            "HOTSWAP_BODY_MIN_RATE must be positive"
        )
    if s.body_grace_seconds < 0 or s.overload_unready_seconds < 0:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_BODY_GRACE_SECONDS and HOTSWAP_OVERLOAD_UNREADY_SECONDS "
            "must not be negative"
        )


def _check_forward(s: Settings) -> None:
    if not 1 <= s.max_forward_batch <= MAX_FORWARD_BATCH:
        raise SystemExit(
            f"hotswap-runtime: HOTSWAP_MAX_FORWARD_BATCH must be 1..{MAX_FORWARD_BATCH}"
        )
    if s.forward_memory_bytes < MIN_FORWARD_MEMORY_BYTES:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_FORWARD_MEMORY_BYTES must be at least "
            f"{MIN_FORWARD_MEMORY_BYTES} bytes"
        )


def _check_heads(s: Settings) -> None:
    if s.head_bytes < 1024 or s.head_seconds <= 0:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_HEAD_BYTES must be 1024 or more and "
            "HOTSWAP_HEAD_SECONDS positive"
        )
    if s.keep_alive_seconds < 1 or s.max_connections < 1:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_KEEP_ALIVE_SECONDS and HOTSWAP_MAX_CONNECTIONS must be >= 1"
        )


def _check_grpc(s: Settings) -> None:
    if min(s.grpc_max_connections, s.grpc_max_streams, s.grpc_receiving) < 1:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_GRPC_MAX_CONNECTIONS, _MAX_STREAMS and _RECEIVING "
            "must be >= 1"
        )
    if s.grpc_receive_seconds <= 0 or s.grpc_min_ping_seconds < 0:
        raise SystemExit(
            "hotswap-runtime: HOTSWAP_GRPC_RECEIVE_SECONDS must be positive and "
            "HOTSWAP_GRPC_MIN_PING_SECONDS not negative"
        )


def _is_proxy_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        plain = parts.path in ("", "/") and not parts.query
        return parts.scheme in ("http", "https") and bool(parts.hostname) and plain
    except ValueError:
        return False
