"""The CNCF distribution registry on loopback for oci:// tests and benchmarks, with token auth.

``serve()`` starts ``.cache/bin/registry`` (``make registry``) over TLS (a test CA in
``ca``: point ``SSL_CERT_FILE`` at it), its storage in a temporary folder, and a token
server of the tests' own: the registry's ``auth.token`` trusts the certificate the token
server signs its JWTs (RS256, the certificate in ``x5c``) with. The token server grants
``pull`` and ``push`` to USER:PASSWORD (HTTP Basic) and nothing to anyone else, and
records the requests it saw. ``push()`` stores files as a ModelPack-style artifact
(each file one raw layer titled by its path) through the registry's HTTP API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devcluster import certs, procs
from devcluster.cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / ".cache" / "bin" / "registry"
USER, PASSWORD = "alice", "registry-s3cret-pw"
SERVICE, ISSUER = "hotswap-test-registry", "hotswap-test-tokens"
ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class TokenServer:
    url: str
    requests: list[tuple[str, dict[str, str]]]  # path and headers of each request


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    ca: Path
    tokens: TokenServer
    issued: list[str]  # every token handed out

    def docker_config(self, host: str | None = None) -> str:
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return json.dumps({"auths": {host or self.host: {"auth": auth}}})

    def push(self, repository: str, tag: str, files: Mapping[str, bytes | Path]) -> str:
        """Store ``files`` (contents, or paths streamed from disk) as one artifact tagged
        ``tag``; its manifest's digest."""
        headers = {"Authorization": "Bearer " + self.token(repository, "pull,push")}
        with httpx.Client(verify=ssl.create_default_context(cafile=self.ca), timeout=120) as web:
            base = f"https://{self.host}/v2/{repository}"
            config = _blob(web, base, headers, b"{}")
            layers = [
                {**_blob(web, base, headers, data), "mediaType": WEIGHT}
                | {"annotations": {"org.cncf.model.filepath": name}}
                for name, data in files.items()
            ]
            manifest = {
                "schemaVersion": 2,
                "mediaType": MANIFEST,
                "artifactType": ARTIFACT,
                "config": {**config, "mediaType": CONFIG},
                "layers": layers,
            }
            body = json.dumps(manifest).encode()
            put = web.put(
                f"{base}/manifests/{tag}",
                content=body,
                headers={**headers, "Content-Type": MANIFEST},
            )
            assert put.status_code == 201, put.status_code
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def token(self, repository: str, actions: str) -> str:
        basic = httpx.BasicAuth(USER, PASSWORD)
        query = {"service": SERVICE, "scope": f"repository:{repository}:{actions}"}
        verify = ssl.create_default_context(cafile=self.ca)
        answer = httpx.get(self.tokens.url + "/token", params=query, auth=basic, verify=verify)
        token: str = answer.json()["token"]
        return token


def _blob(
    web: httpx.Client, base: str, headers: dict[str, str], data: bytes | Path
) -> dict[str, object]:
    if isinstance(data, Path):
        with data.open("rb") as file:
            digest = "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()
        size = data.stat().st_size
    else:
        digest, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    start = web.post(f"{base}/blobs/uploads/", headers=headers)
    assert start.status_code == 202, start.status_code
    location = str(httpx.URL(base).join(start.headers["location"]))
    separator = "&" if "?" in location else "?"
    sized = {**headers, "Content-Length": str(size)}
    url = f"{location}{separator}digest={digest}"
    if isinstance(data, Path):
        with data.open("rb") as file:
            done = web.put(url, content=_chunks(file), headers=sized)
    else:
        done = web.put(url, content=data, headers=sized)
    assert done.status_code == 201, done.status_code
    return {"digest": digest, "size": size}


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(8 << 20):
        yield chunk


@contextmanager
def serve(workdir: Path, host: str = "127.0.0.1") -> Iterator[Registry]:
    """The registry and its token server, both on ``host`` (its certificate's name)."""
    assert REGISTRY.is_file(), f"{REGISTRY} is missing: run `make registry`"
    workdir.mkdir(parents=True, exist_ok=True)
    served = certs.self_signed(workdir, "hotswap-test-tls", (host,), algorithm="rsa")
    signer = certs.self_signed(workdir, "hotswap-test-signer", algorithm="rsa")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(served.cert, served.key)
    issued: list[str] = []
    with _token_server(host, tls, _token_route(signer.cert, signer.key, issued)) as tokens:
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_config(workdir, f"{host}:{port}", served, signer.cert, tokens.url))
        registry = Registry(f"{host}:{port}", served.cert, tokens, issued)
        argv = [str(REGISTRY), "serve", str(config)]
        with procs.serving("registry", argv, lambda: _answers(registry), logs=workdir):
            yield registry


def _answers(registry: Registry) -> bool:
    verify = ssl.create_default_context(cafile=registry.ca)
    try:
        return httpx.get(f"https://{registry.host}/v2/", verify=verify).status_code == 401
    except httpx.HTTPError:
        return False


def _config(workdir: Path, address: str, tls: certs.KeyPair, signer: Path, tokens: str) -> str:
    return json.dumps(  # YAML is a superset of JSON
        {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}},
            "http": {
                "addr": address,
                "secret": uuid.uuid4().hex,
                "tls": {"certificate": str(tls.cert), "key": str(tls.key)},
            },
            "auth": {
                "token": {
                    "realm": f"{tokens}/token",
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(signer),
                }
            },
        }
    )


Route = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def _token_server(host: str, tls: ssl.SSLContext, route: Route) -> Iterator[TokenServer]:
    """An HTTPS server on ``host`` answering every GET with ``route``."""
    requests: list[tuple[str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            requests.append((self.path, dict(self.headers.items())))
            route(self)

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield TokenServer(f"https://{host}:{server.server_address[1]}", requests)
    finally:
        server.shutdown()
        server.server_close()


def _token_route(signer: Path, key_path: Path, issued: list[str]) -> Route:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_pem_x509_certificate(signer.read_bytes())
    x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def route(h: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(h.path).query)
        access = []
        if h.headers.get("Authorization") == expected:
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        token = _jwt(key, x5c, query.get("service", [""])[0], access)
        issued.append(token)
        body = json.dumps({"token": token}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return route


def _jwt(key: rsa.RSAPrivateKey, x5c: str, audience: str, access: Sequence[object]) -> str:
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "x5c": [x5c]}
    claims = {
        "iss": ISSUER,
        "sub": USER,
        "aud": audience,
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
