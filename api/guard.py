"""The gate in front of every endpoint: admin token first, then a bounded body.

A plain ASGI middleware, so it acts *before* FastAPI reads and parses a body:

- Admin requests (``/v1/admin/*``, ``DELETE /v1/users/*``) are checked for the bearer
  token from the headers alone; a request without the right token is answered 401 (with
  ``WWW-Authenticate: Bearer``) or 404 (admin off) without its body ever being read.
- Every body is bounded: a ``Content-Length`` over the limit is refused with 413 at
  once, and a body sent without one (chunked) is counted as it streams and refused
  when it passes the limit. Authenticated admin requests get a larger limit (bulk
  product upserts); everything else gets ``max_body_bytes``.

Tokens are compared with :func:`hmac.compare_digest` (no timing side channel).
"""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyTooLarge", "RequestGuard", "admin_denial", "is_admin_request"]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit (FastAPI re-raises an
    HTTPException met while reading a body, so the client gets this 413, not a 400)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(status_code=413, detail=_too_large(size, limit))


def is_admin_request(method: str, path: str) -> bool:
    """Whether ``method path`` is an admin call (token required)."""
    return path.startswith("/v1/admin/") or (method == "DELETE" and path.startswith("/v1/users/"))


def admin_denial(token: str | None, authorization: str | None) -> tuple[int, str] | None:
    """``(status, message)`` when a request with ``authorization`` may not use the admin
    endpoints of a server whose admin token is ``token``; None when it may."""
    if not token:
        return 404, "admin endpoints are off; set SHOPSEARCH_ADMIN_TOKEN"
    expected = f"Bearer {token}".encode()
    given = (authorization or "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, expected):
        return 401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'"
    return None


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: admin token check and body-size limits (see the module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        admin_token: str | None,
        max_body_bytes: int,
        max_admin_body_bytes: int,
    ) -> None:
        self.app = app
        self.admin_token = admin_token
        self.max_body_bytes = max_body_bytes
        self.max_admin_body_bytes = max_admin_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.max_body_bytes
        if is_admin_request(scope["method"], scope["path"]):
            denial = admin_denial(self.admin_token, headers.get("authorization"))
            if denial is not None:
                status, detail = denial
                extra = {"www-authenticate": "Bearer"} if status == 401 else {}
                await _answer(send, status, detail, extra)
                return
            limit = self.max_admin_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, "Content-Length must be a whole number of bytes", {})
                return
            if int(length) > limit:
                await _answer(send, 413, _too_large(int(length), limit), {})
                return

        seen = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(seen, limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge as exc:  # raised outside FastAPI's body reading
            if started:
                raise
            await _answer(send, 413, str(exc.detail), {})


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes is over the limit of {limit} bytes; send less per "
        "request (bulk catalog changes: `shopsearch update`)"
    )
