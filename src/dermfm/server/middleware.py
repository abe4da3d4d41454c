"""ASGI middleware of the server, around every route (the web app, ``/docs`` and the API alike).

:class:`SafeResponses` gives each request an id and each response the security headers, and turns
any exception into a 500 that names only the exception's type and the request id; the log line is
the same, so neither the answer nor the log ever holds a traceback or the request's content (an
exception's message may quote patient text). :class:`BodyLimit` counts the bytes of a request body
as they arrive (``Content-Length`` and chunked alike) and answers 413 as soon as they pass the
route's limit, before anything reads or parses more.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dermfm.server.auth import ApiError

#: The logger of the server's own lines (request ids and exception types only).
LOG = logging.getLogger("dermfm.server")

#: Content-Security-Policy of every response: scripts, styles, fonts and connections only from
#: this server (no inline script or style, no eval), images also from ``blob:`` and ``data:`` (the
#: web app's previews, Swagger UI's icons), no plugins, no ``<base>``, forms only to this server,
#: and no framing by any page.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

#: Headers added to every response.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: Added to API responses (patient data) unless a route set its own ``Cache-Control``.
API_CACHE_CONTROL = "no-store"

#: Response header carrying the request id (also named in 500 answers and in the log).
REQUEST_ID_HEADER = "X-Request-ID"


class SafeResponses:
    """Request ids, security headers and exceptions that leak nothing (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        started = False

        async def send_safely(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers[REQUEST_ID_HEADER] = request_id
                if scope["path"].startswith("/api/") and "cache-control" not in headers:
                    headers["Cache-Control"] = API_CACHE_CONTROL
            await send(message)

        try:
            await self.app(scope, receive, send_safely)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", "-")
            kind = type(exc).__name__
            LOG.error("request %s: %s %s failed: %s", request_id, scope["method"], route, kind)
            if not started:
                error = ApiError(500, "internal", f"internal error ({kind}); request {request_id}")
                await error.response()(scope, receive, send_safely)


class _TooLarge(HTTPException):
    """Raised from ``receive`` when the body passes its limit. FastAPI lets it through the
    body parsing, and the app's handler of HTTP errors answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the limit of {limit:,} bytes")

    def response(self) -> Response:
        """The 413 answer, for when nothing else has answered."""
        return ApiError(413, "too_large", str(self.detail)).response()


class BodyLimit:
    """Request bodies limited on the stream: ``limit_for(scope)`` bytes per request.

    A declared ``Content-Length`` over the limit is answered 413 without running the route; any
    other body (chunked included) is counted as it is received and the read that passes the
    limit raises a 413, so at most ``limit`` bytes (plus one network chunk) are ever read.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _TooLarge(limit).response()(scope, receive, send)
            return
        received = 0
        started = False

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_limited, send_tracked)
        except _TooLarge as exc:  # read by something that does not turn it into a response
            if started:
                raise
            await exc.response()(scope, receive, send)


__all__ = [
    "API_CACHE_CONTROL",
    "CONTENT_SECURITY_POLICY",
    "LOG",
    "REQUEST_ID_HEADER",
    "SECURITY_HEADERS",
    "BodyLimit",
    "SafeResponses",
]
