"""Who may talk to Easel over HTTP, from where, and how much: three small ASGI middlewares.

- BasicAuth: with --auth/--api-auth, every route (UI, API, files, docs, unknown paths)
  answers 401 without the right credentials, before anything else looks at the request.
- SameOrigin: a state-changing request (POST, PUT, PATCH, DELETE) that carries a foreign
  Origin (another scheme, host or port) is refused (403) unless that origin was allowed with
  --cors-allow-origins; this stops a web page the user visits from driving a local Easel.
- CorsPolicy: no route, Gradio's included, sends CORS headers to an origin that is not
  listed, so no other web page can read what Easel serves (generated images included).
- BodyLimit: request bodies larger than the limit are refused with 413 before they are
  parsed, on every route; Gradio's own API (which streams its uploads to disk) is counted
  as it streams instead of buffered. JSON nested absurdly deep is refused with 422.
- LoopbackHost: when Easel listens on loopback only, a request whose Host header names
  anything but this computer (localhost, 127.0.0.1, [::1]) is refused (403). A page on
  evil.example whose DNS name is switched to 127.0.0.1 ("DNS rebinding") is same-origin
  with itself, so only the Host header it must send gives it away.

They are plain ASGI (no BaseHTTPMiddleware), so streaming responses and the client
disconnect detection the API relies on pass through untouched.
"""
from __future__ import annotations

import base64
import binascii
import contextvars
import ipaddress
import json
import secrets
from typing import Iterable
from urllib.parse import urlsplit

from .json_depth import MAX_JSON_DEPTH, nesting_exceeds

REALM = 'Basic realm="Easel", charset="UTF-8"'
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
USER_KEY = "easel.user"
# the logged-in user of the request being handled, for code that is not handed the request
current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("easel_current_user", default=None)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def parse_credentials(values: Iterable[str | None]) -> list[tuple[str, str]]:
    """'user:pass[,user2:pass2]' (each value may list several); raises ValueError on a bad entry."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        for entry in (value or "").split(","):
            entry = entry.strip()
            if not entry:
                continue
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                raise ValueError("credentials must look like user:password[,user2:password2]")
            pairs.append((user, password))
    return pairs


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class BasicAuth:
    def __init__(self, app, credentials: list[tuple[str, str]]):
        self.app = app
        self.credentials = credentials

    def user(self, scope) -> str | None:
        header = _header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        if not sep:
            return None
        found = None
        for known_user, known_password in self.credentials:  # compare all: no timing hint which user exists
            if secrets.compare_digest(user.encode(), known_user.encode()) & secrets.compare_digest(
                    password.encode(), known_password.encode()):
                found = known_user
        return found

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        user = self.user(scope)
        if user is None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            return await _send_json(send, 401, {"error": "Unauthorized", "detail": "Not authenticated"},
                                    [(b"www-authenticate", REALM.encode())])
        scope[USER_KEY] = user
        token = current_user.set(user)
        try:
            return await self.app(scope, receive, send)
        finally:
            current_user.reset(token)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin_tuple(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None when it cannot be parsed."""
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


def is_same_origin(scope, origin: str) -> bool:
    """True when `origin` is this server as the request reached it: the same scheme, host and port.

    A page on https://127.0.0.1:7860 is another origin than Easel on http://127.0.0.1:7860 (a
    TLS proxy or another program on that port): browsers keep them apart, and so does this."""
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
        return False
    theirs = _origin_tuple(parts.scheme, parts.netloc)
    ours = _origin_tuple(scope.get("scheme", "http"), _header(scope, b"host") or "")
    return theirs is not None and theirs == ours


class CorsPolicy:
    """Cross-origin reads only for the origins listed with --cors-allow-origins, on every route.

    Gradio adds its own CORS headers to its routes (`/gradio_api/file=...` included): it echoes
    any localhost Origin, and any Origin at all when the host is not localhost, with
    `Access-Control-Allow-Credentials: true`, so another web page could read generated images.
    Outside everything but the Host check, this strips every `Access-Control-*` response header
    unless the request's Origin is listed, and answers preflights from other origins with 403.
    Same-origin pages need no CORS headers; listed origins get them from Starlette's CORSMiddleware.
    """

    def __init__(self, app, allowed_origins: Iterable[str] = ()):
        self.app = app
        self.allowed = {o.rstrip("/") for o in allowed_origins}

    def listed(self, origin: str) -> bool:
        return "*" in self.allowed or origin.rstrip("/") in self.allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = _header(scope, b"origin")
        if origin is None or self.listed(origin):
            return await self.app(scope, receive, send)
        if scope.get("method") == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            return await _send_json(send, 403, {
                "error": "Forbidden",
                "detail": f"cross-origin requests from {origin} are not allowed (start Easel with "
                          "--cors-allow-origins to allow an origin)"})

        async def send_without_cors(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [(k, v) for k, v in message.get("headers", [])
                                      if not k.lower().startswith(b"access-control-")]
            await send(message)

        return await self.app(scope, receive, send_without_cors)


class SameOrigin:
    def __init__(self, app, allowed_origins: Iterable[str] = ()):
        self.app = app
        self.allowed = {o.rstrip("/") for o in allowed_origins}

    def allows(self, scope) -> bool:
        if scope["type"] != "http" or scope.get("method") not in STATE_CHANGING:
            return True
        origin = _header(scope, b"origin")
        if origin is None:
            return True  # not a browser page (curl, scripts, API clients)
        if "*" in self.allowed or origin.rstrip("/") in self.allowed:
            return True
        return is_same_origin(scope, origin)

    async def __call__(self, scope, receive, send):
        if not self.allows(scope):
            origin = _header(scope, b"origin")
            return await _send_json(send, 403, {
                "error": "Forbidden",
                "detail": f"cross-origin request refused: Origin {origin} may not change anything here "
                          "(start Easel with --cors-allow-origins to allow it)"})
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, on every path, before they are parsed.

    Limiting everything (not a list of API prefixes) means a route added later, or by an
    extension, is covered without anyone remembering to. Bodies are read into memory and
    replayed, except on the `streamed` prefixes (Gradio's API, which streams file uploads
    to disk itself) when they declare a Content-Length within the limit, as browsers always
    do: the server then delivers no more than that, so they pass straight through. A body
    without a length is read up to the limit on every path (cutting a stream Gradio is
    writing to disk would leave its temporary files behind). JSON bodies nested deeper than
    MAX_JSON_DEPTH are refused with a 422 naming `body` (see json_depth.py).
    """

    def __init__(self, app, limit: int, streamed: tuple[str, ...] = ("/gradio_api/",)):
        self.app = app
        self.limit = limit
        self.streamed = streamed

    async def _refuse(self, send) -> None:
        await _send_json(send, 413, {"error": "PayloadTooLarge",
                                     "detail": f"request body larger than {self.limit} bytes "
                                               "(raise it with --api-max-body-mb)"},
                         [(b"connection", b"close")])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await _send_json(send, 400, {"error": "BadRequest", "detail": "invalid Content-Length"})
            if int(declared) > self.limit:
                await self._drain(receive, int(declared))
                return await self._refuse(send)
        if declared is not None and scope.get("path", "").startswith(self.streamed):
            return await self.app(scope, receive, send)  # the server delivers no more than the declared length
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                if message.get("more_body", False):  # the rest is still coming: read past it first
                    await self._drain(receive, None)
                return await self._refuse(send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        if _is_json(scope) and nesting_exceeds(data):
            return await _send_json(send, 422, {"error": "ValidationError", "detail": [
                {"loc": ["body"], "msg": f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels",
                 "type": "value_error"}]})
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _drain(self, receive, declared: int | None) -> None:
        """Read (and drop) a moderately oversized body, so the client sees the 413 instead of a reset."""
        if declared is not None and declared > 4 * self.limit + (16 << 20):
            return
        budget = 4 * self.limit + (16 << 20)
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _is_json(scope) -> bool:
    content_type = (_header(scope, b"content-type") or "").lower()
    return "json" in content_type or not content_type


def is_loopback_host(value: str) -> bool:
    """True for a Host header naming this computer: localhost, 127.x.x.x or [::1], with or without a port."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep:
            return False
    else:
        name, _, rest = value.partition(":")
        rest = ":" + rest if rest else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHost:
    """Refuse requests addressed (by their Host header) to any name but this computer's.

    Installed only when Easel listens on loopback; with --listen, other names are expected
    and auth is required anyway. A request without a Host header is not from a browser
    (browsers always send one), so it cannot be a rebinding attack and is let through.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if host is None or is_loopback_host(host):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        return await _send_json(send, 403, {
            "error": "Forbidden",
            "detail": f"Host {host!r} is not this computer: Easel listens on 127.0.0.1 only and answers requests "
                      "addressed to localhost, 127.0.0.1 or [::1] (this blocks DNS-rebinding attacks from web "
                      "pages; start Easel with --listen and --auth to serve other names)"})
