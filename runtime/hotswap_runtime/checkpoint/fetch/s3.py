"""s3:// checkpoints through s3fs, run on the store's fetch loop and streamed.

Credentials and the endpoint come from the Secret folder (``credentials.py``). The
endpoint's host is checked with the address policy before the client is built, and every
connection the client opens resolves through a resolver that drops refused addresses,
so the address checked is the one connected to. One ``GetObject`` (the object's size
from its headers, before a byte of the body is read), its body streamed chunk by chunk;
objects over one part are also read with ranged ``GetObject`` calls of the same version
(``fetch_stream``: parts in parallel, a broken connection resumed);
botocore's connect and read timeouts are the policy's, without retries, so no wait
outlasts the idle bound. Failures are described by HTTP status or exception type only:
S3 error messages, request IDs and key IDs never reach a reason.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import botocore.exceptions  # type: ignore[import-untyped]
import s3fs
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from hotswap_contract.policy import address_refusal
from hotswap_contract.redact import redact_uri
from hotswap_runtime.checkpoint.fetch.net import NetPolicy, allowed_addresses, stalled
from hotswap_runtime.checkpoint.fetch.stream import Body
from hotswap_runtime.errors import CheckpointNotFound, Dropped, FetchError, FetchRefused, SwapError

READ_BYTES = 8 << 20  # at most this much per read; a read returns what has arrived
_OPTIONS = {
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "AWS_SESSION_TOKEN": "token",
    "AWS_ENDPOINT_URL": "endpoint_url",
}
_ENDPOINT = "the S3 endpoint (AWS_ENDPOINT_URL of the Secret)"


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that returns only the addresses the fetch policy allows."""

    def __init__(self, policy: NetPolicy) -> None:
        self.policy = policy
        self.refusal: str | None = None
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = []
        for result in results:
            refusal = address_refusal(result["host"], self.policy.allowed, redirect=False)
            if refusal is None:
                allowed.append(result)
            else:
                self.refusal = self.refusal or refusal
        if not allowed:
            raise OSError(f"every address of {host} is refused")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@asynccontextmanager
async def open_s3(uri: str, secret: dict[str, str], policy: NetPolicy) -> AsyncIterator[Body]:
    """The body of the object named by ``uri``."""
    shown = redact_uri(uri)
    if secret.get("AWS_ENDPOINT_URL"):
        await _check_endpoint(secret["AWS_ENDPOINT_URL"], policy, shown)
    resolver = GuardedResolver(policy)
    fs = s3fs.S3FileSystem(
        asynchronous=True,
        loop=asyncio.get_running_loop(),
        skip_instance_cache=True,
        **_options(secret, policy, resolver),
    )
    bucket, key, version = fs.split_path(uri)
    extra = {"VersionId": version} if version else {}
    try:
        client = await fs.set_session()
    except Exception as exc:
        raise _failure(exc, shown, policy, resolver) from None
    try:
        try:
            response = await client.get_object(Bucket=bucket, Key=key, **extra)
        except Exception as exc:
            raise _failure(exc, shown, policy, resolver) from None
        body = response["Body"]
        try:
            size = response.get("ContentLength")
            size = size if isinstance(size, int) else None
            if version is None and isinstance(response.get("VersionId"), str):
                extra = {"VersionId": response["VersionId"]}  # ranges read this very version

            @asynccontextmanager
            async def ranges(start: int, end: int) -> AsyncIterator[Body]:
                where = {"Bucket": bucket, "Key": key, **extra}
                async with _range(client, where, (start, end, size), shown, policy, resolver) as b:
                    yield b

            yield Body(size, _chunks(body, shown, policy), ranges if size is not None else None)
        finally:
            body.close()
    finally:
        await client.close()


@asynccontextmanager
async def _range(
    client: Any,
    where: dict[str, str],
    span: tuple[int, int, int | None],
    shown: str,
    policy: NetPolicy,
    resolver: GuardedResolver,
) -> AsyncIterator[Body]:
    """Bytes ``[start, end)`` of the object: a ranged ``GetObject`` whose
    ``ContentRange`` must be exactly the one asked for."""
    start, end, size = span
    try:
        response = await client.get_object(Range=f"bytes={start}-{end - 1}", **where)
    except Exception as exc:
        raise _failure(exc, shown, policy, resolver) from None
    body = response["Body"]
    try:
        if response.get("ContentRange") != f"bytes {start}-{end - 1}/{size}":
            raise FetchError(
                f"cannot fetch checkpoint {shown}: S3 answered a range request with another "
                "range or size (the object changed?)"
            )
        yield Body(end - start, _chunks(body, shown, policy))
    finally:
        body.close()


def _options(
    secret: dict[str, str], policy: NetPolicy, resolver: GuardedResolver
) -> dict[str, Any]:
    options: dict[str, Any] = {
        option: secret[key] for key, option in _OPTIONS.items() if secret.get(key)
    }
    if secret.get("AWS_REGION"):
        options["client_kwargs"] = {"region_name": secret["AWS_REGION"]}
    options["config_kwargs"] = {
        "connect_timeout": policy.connect_seconds,
        "read_timeout": policy.idle_seconds,
        "retries": {"total_max_attempts": 1},
        "connector_args": {"resolver": resolver},
    }
    if policy.proxy:
        options["config_kwargs"]["proxies"] = {"http": policy.proxy, "https": policy.proxy}
    return options


async def _check_endpoint(endpoint: str, policy: NetPolicy, shown: str) -> None:
    try:
        parts = urlsplit(endpoint)
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    except ValueError:
        scheme, host, port = "", None, None
    if scheme not in ("http", "https") or not host:
        raise FetchError(
            f"cannot fetch checkpoint {shown}: {_ENDPOINT} is not an http(s) URL; fix the Secret"
        )
    port = port or (443 if scheme == "https" else 80)
    await allowed_addresses(host, port, policy, redirect=False, shown=shown, where=_ENDPOINT)


async def _chunks(body: Any, shown: str, policy: NetPolicy) -> AsyncGenerator[bytes, None]:
    try:
        while chunk := await body.read(READ_BYTES):
            yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
        raise Dropped(f"cannot fetch checkpoint {shown}: S3 broke off the response") from None
    except Exception as exc:
        raise _failure(exc, shown, policy, None) from None
    finally:
        body.close()  # closed early: the first response, once its part is read


def _failure(
    exc: Exception, shown: str, policy: NetPolicy, resolver: GuardedResolver | None
) -> SwapError:
    """A reason for an S3 failure, from its status code or type only."""
    if resolver is not None and resolver.refusal is not None:
        return FetchRefused(f"cannot fetch checkpoint {shown}: {_ENDPOINT}: {resolver.refusal}")
    if isinstance(exc, botocore.exceptions.ClientError):
        return _status_failure(_status(exc), shown)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return FetchError(
            f"cannot fetch checkpoint {shown}: no complete S3 credentials; set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the Secret named by "
            "checkpoint.secretRef"
        )
    if isinstance(exc, botocore.exceptions.ConnectTimeoutError):
        return FetchError(
            f"cannot fetch checkpoint {shown}: {_ENDPOINT} did not accept a connection "
            f"within {policy.connect_seconds:g} s"
        )
    if isinstance(exc, botocore.exceptions.ReadTimeoutError | TimeoutError):
        return stalled(shown, policy)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return FetchError(f"cannot fetch checkpoint {shown}: cannot connect to {_ENDPOINT}")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return FetchError(f"checkpoint URI {shown} does not name a valid bucket and key")
    return FetchError(f"cannot fetch checkpoint {shown}: {type(exc).__name__}")


def _status(exc: botocore.exceptions.ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _status_failure(status: int | None, shown: str) -> SwapError:
    if status == 404:
        return CheckpointNotFound(
            f"checkpoint {shown} does not exist (HTTP 404); check spec.checkpoint.uri"
        )
    if status in (401, 403):
        return FetchError(
            f"cannot fetch checkpoint {shown}: access denied (HTTP {status}); check the "
            "credentials in the Secret named by checkpoint.secretRef"
        )
    return FetchError(f"cannot fetch checkpoint {shown}: S3 answered HTTP {status}")
