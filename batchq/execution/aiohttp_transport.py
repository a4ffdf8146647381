"""A minimal ``httpx2.AsyncBaseTransport`` backed by one ``aiohttp.ClientSession``.

It lets an ``httpx2.AsyncClient`` keep its API (timeouts, headers, ``Response``) while
aiohttp drives the sockets. The whole response body is read before returning, so the
``httpx2.Response`` is built from bytes (no streaming), which is all batchq needs.

aiohttp errors become the httpx2 errors that ``batchq.execution.upstream`` already handles
(``httpx2.TimeoutException`` / ``httpx2.TransportError`` subclasses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx2

__all__ = ["AiohttpTransport", "translate_error"]

_HTTP_11 = b"HTTP/1.1"


def _timeout(extensions: Mapping[str, Any]) -> aiohttp.ClientTimeout:
    """httpx2's per-request timeouts (connect/read/write/pool) as an aiohttp timeout."""
    t = extensions.get("timeout") or {}
    return aiohttp.ClientTimeout(
        total=None, connect=t.get("pool"), sock_connect=t.get("connect"), sock_read=t.get("read")
    )


# aiohttp (and asyncio timeout) errors and their httpx2 twins; the first match wins, so subclasses
# come before their bases.
_ERRORS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], type[httpx2.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx2.ConnectTimeout),
    ((aiohttp.ServerTimeoutError, asyncio.TimeoutError), httpx2.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx2.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx2.RemoteProtocolError),
    ((aiohttp.ClientConnectionError, aiohttp.ClientPayloadError), httpx2.ReadError),
    (aiohttp.InvalidURL, httpx2.UnsupportedProtocol),
)


def translate_error(exc: BaseException) -> httpx2.TransportError | None:
    """The httpx2 error matching an aiohttp (or asyncio timeout) error, or None if unrelated."""
    kind = next((httpx2_kind for foreign, httpx2_kind in _ERRORS if isinstance(exc, foreign)), None)
    return kind(str(exc) or type(exc).__name__) if kind is not None else None


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """Send httpx2 requests through ``session`` (owned: closed by ``aclose``)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                auto_decompress=False,  # httpx2 decodes content-encoding itself
                timeout=_timeout(request.extensions),
            ) as response:
                content = await response.read()
                status, headers, reason = response.status, response.raw_headers, response.reason
        except (TimeoutError, aiohttp.ClientError) as exc:
            mapped = translate_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        extensions: dict[str, Any] = {"http_version": _HTTP_11}
        if reason:
            extensions["reason_phrase"] = reason.encode("ascii", errors="replace")
        return httpx2.Response(status, headers=headers, content=content, request=request, extensions=extensions)

    async def aclose(self) -> None:
        await self._session.close()
