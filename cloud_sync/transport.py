"""How the Zap reaches the cloud: which URLs it may use, and how much it reads back.

Plans and ACKs are signed, but a plain `http://` link to another host still lets anyone on
the path read the site's telemetry and answer in the cloud's place. The Zap therefore uses
plain http only to a loopback address (a local zapcloud, the demo, a TLS-terminating proxy
on the same box) unless the operator says `allow_insecure = true` (or `--allow-insecure`).

Every answer is read with a size cap, so a hostile or broken server cannot make the Zap
buffer an endless body.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

# A telemetry ACK or an error body; the plan has its own, larger cap (wire.MAX_BODY_BYTES).
MAX_ACK_BYTES: Final = 64 * 1024


class InsecureTransportError(ValueError):
    """The cloud URL is plain http:// to a host that is not loopback, and nobody allowed it."""


class ResponseTooLargeError(httpx.HTTPError):
    """The server sent more than the Zap reads for that kind of answer."""


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True  # RFC 6761: always the loopback interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_url_problem(url: str, allow_insecure: bool) -> str | None:
    """Why the Zap must not use `url` for its cloud link, or None when it may."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return None
    if scheme != "http":
        return f"{url!r} is neither https:// nor http://"
    host = parts.hostname or ""
    if _is_loopback(host) or allow_insecure:
        return None
    return (
        f"plain http:// to {host or '?'} (not a loopback address) would let anyone on the path read the "
        "telemetry and answer for the cloud: use https://, or set cloud.allow_insecure = true "
        "(or zapd --allow-insecure) if you accept that"
    )


def require_secure_url(url: str, allow_insecure: bool) -> None:
    problem = insecure_url_problem(url, allow_insecure)
    if problem is not None:
        raise InsecureTransportError(f"cloud.url: {problem}")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response read to the end under a size cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    request: httpx.Request

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


async def request_limited(client: httpx.AsyncClient, method: str, url: str, *, limit: int, **kwargs: Any) -> Answer:
    """Send a request and read at most `limit` bytes of (decoded) body; raise ResponseTooLargeError beyond."""
    async with client.stream(method, url, **kwargs) as resp:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(f"{method} {url}: Content-Length {declared}, larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ResponseTooLargeError(f"{method} {url}: answer larger than {limit} bytes")
            chunks.append(chunk)
        return Answer(resp.status_code, resp.headers, b"".join(chunks), resp.request)
