"""What every request passes before the API reads it, so no request costs more than its limits.

The API key is checked first, before any of the body is read: a request without it gets 401
however large its body. The body is then read up to `qa.max_body_bytes` (413 as soon as the
Content-Length or the bytes read pass it) within `qa.read_timeout_seconds` (408: a stalled
upload holds no connection open), and must be UTF-8 JSON nested at most MAX_JSON_DEPTH levels
(422, like any other bad request). A request refused before its whole body arrived closes the
connection, so the rest is never read. `head_timeout_protocol` does the same for the request
line and headers, which arrive before the app sees anything.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import h11
import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

API_KEY_HEADER = "X-API-Key"
MAX_JSON_DEPTH = 32
ECHO_CHARS = 100  # of a client's text quoted in an error
# The form, its files, the docs and readiness need no key: the form asks for it.
PUBLIC_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def json_problem(body: bytes) -> str | None:
    """Why `body` is not a JSON document the API can read, or None when it is."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start})"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # orjson stops at 1,024 levels
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        return f"not valid JSON ({exc.msg})"
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    if b'"' in body:  # a repeated key would silently keep its last value
        try:
            json.loads(text, object_pairs_hook=_unique_keys)
        except _RepeatedKey as exc:
            return f"duplicate key {str(exc)[:ECHO_CHARS]!r}"
    return None


class _RepeatedKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, refusing a key given twice (orjson keeps the last)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


async def _respond(send: Send, status: int, body: dict[str, Any], close: bool) -> None:
    data = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class RequestGuard:
    """ASGI middleware: the key, then the body within its size and time, then its JSON."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int,
                 read_timeout: float) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = scope["path"]
        if self.api_key and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES) \
                and not secrets.compare_digest(headers.get(API_KEY_HEADER, "").encode(),
                                               self.api_key.encode()):
            await _respond(send, 401, {"detail": f"missing or wrong {API_KEY_HEADER} header"},
                           close=True)
            return
        too_large = {"detail": f"the request body is over {self.max_body_bytes} bytes"}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await _respond(send, 413, too_large, close=True)
            return
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await self._read(receive)
        except TimeoutError:
            await _respond(send, 408, {"detail": f"the request body did not arrive within "
                                                 f"{self.read_timeout:g} s"}, close=True)
            return
        except _TooLarge:
            await _respond(send, 413, too_large, close=True)
            return
        except _Disconnected:
            return
        problem = json_problem(body) if body else None
        if problem:
            await _respond(send, 422, {"detail": f"body: {problem}",
                                       "errors": [{"field": "body", "message": problem}]},
                           close=False)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                raise _TooLarge
            if not message.get("more_body", False):
                return bytes(body)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the body already read, then the connection's own messages (a
    streaming response listens there for the client going away)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


class _HeadTimeout(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head has not arrived
    `head_timeout` seconds after it opened or after its last response: uvicorn alone times out
    only connections that send nothing, so half a request head held one open forever."""

    head_timeout = 10.0
    _timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.head_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a head arrived: the body has its own limit
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """The protocol class for `uvicorn.run(http=...)`, with this head timeout."""
    return type("HeadTimeoutProtocol", (_HeadTimeout,), {"head_timeout": seconds})
