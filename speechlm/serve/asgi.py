"""ASGI pieces of the server that know nothing of models: the API-key and body-size guard
(plain ASGI middleware, so it covers every path before routing), JSON body reading, waiting on
work while watching for a client that hangs up, and a blocking iterator bridged to async.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from speechlm.serve.openai_format import APIError, error_body

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/", "/health", "/favicon.ico")  # no API key needed (the demo page asks for one itself)
PUBLIC_PREFIXES = ("/static/",)

class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit / 2**20:g} MiB (--max-request-mb)")


class GuardMiddleware:
    """API key (401) and body size (413) checks of HTTP requests; WebSockets check their own key."""

    def __init__(self, app, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.api_key and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                msg = "invalid API key" if given else "missing API key: send Authorization: Bearer <key>"
                await _send_json(send, 401, error_body(401, msg), {"www-authenticate": "Bearer"})
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, BodyTooLarge(self.max_bytes).body())
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # a chunked body without Content-Length
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def read_json(request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the body is not valid JSON ({e}); send Content-Type: application/json") from None


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


async def until_disconnect(request, awaitable: Awaitable, cancel: threading.Event | None = None,
                           poll_s: float = 0.25) -> Any:
    """Await ``awaitable`` unless the client goes away first: then cancel it (a scheduler request
    is dropped; an agent turn stops after its running step via ``cancel``) and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("%s %s: the client went away; its request is cancelled", request.method, request.url.path)
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            if cancel is not None:
                cancel.set()


async def iterate_in_thread(executor, make: Callable[[], Iterator[Any]],
                            on_close: Callable[[], None] | None = None) -> AsyncIterator[Any]:
    """Items of a blocking iterator made and run in ``executor``, passed to the event loop as
    they come; closing this async iterator (a client that left) calls ``on_close`` (e.g. a
    stream's ``close``) and stops the iteration after its current item."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed meanwhile
            loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

    def work() -> None:
        try:
            gen = make()
            try:
                for item in gen:
                    if stop.is_set():
                        break
                    put("item", item)
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put("error", e)
        else:
            put("end", None)

    loop.run_in_executor(executor, work)
    try:
        while True:
            kind, item = await queue.get()
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        if on_close is not None:
            on_close()
