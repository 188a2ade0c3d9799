"""The server's outer wall, before any route: which hosts and origins are answered, and how large a
request body may grow."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

from ultrasinger_gpu_cli.server.config import LOOPBACK, ServeConfig, needs_token

#: Every request body but an upload: JSON of a few fields.
JSON_LIMIT_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    """A request body past its limit, found while it streams in (an HTTPException, so FastAPI's
    body parsing passes it on as it is)."""


class Guard:
    """The server's outer wall, before any route (a pure ASGI middleware):

    * **Host** (loopback binds): only 127.0.0.1, localhost and [::1] are answered, so a page
      whose DNS name is rebound to 127.0.0.1 gets 403, not the API.
    * **Origin**: a browser request from another web origin (one not given with ``--cors-origin``)
      gets 403, whatever its method or content type (forms post cross-site without a preflight).
    * **Body size**, counted as it streams (chunked bodies included): an upload over
      ``--max-upload-mb`` and any other body over 64 KB stop with 413 at the limit.
    * **A server error** is a 500 with one line on the server's stderr naming the crash log; no
      traceback is printed, none reaches the client."""

    def __init__(self, app: Any, config: ServeConfig, upload_limit_bytes: int) -> None:
        self.app = app
        self.config = config
        self.upload_limit = upload_limit_bytes
        self.loopback = not needs_token(config.host)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = self._refusal(scope, headers)
        if refused is not None:
            await _send_json(send, refused[0], {"detail": refused[1]})
            return
        upload = (scope["method"] == "POST" and scope["path"] == "/api/jobs"
                  and headers.get("content-type", "").startswith("multipart/"))  # fmt: skip
        limit = self.upload_limit if upload else JSON_LIMIT_BYTES
        declared = headers.get("content-length", "")
        too_large = ({"detail": f"the upload is larger than the server's limit of {self.config.max_upload_mb} MB",
                      "hint": "ugpu serve --max-upload-mb N"} if upload else
                     {"detail": f"the request body is larger than the server takes ({_size(limit)})",
                      "hint": "send the JSON the API documents at /docs"})  # fmt: skip
        if declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, too_large)
            return
        received = 0
        overflow = False

        async def counted() -> dict[str, Any]:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise BodyTooLarge(413, too_large["detail"])
            return message

        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if overflow:  # the rest of the body is never read: the connection closes after the 413
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not started:
                await _send_json(send, 413, too_large)
        except Exception as exc:  # noqa: BLE001 - one line and a crash log, never a traceback
            import sys

            from ultrasinger_gpu_cli.crashlog import describe, write_crash_log

            log = write_crash_log(exc)
            print(f"ugpu serve: internal error on {scope['method']} {scope['path']}: {describe(exc)} (details: {log})",
                  file=sys.stderr, flush=True)  # fmt: skip
            if not started:
                await _send_json(send, 500, {"detail": "the server hit an unexpected error", "log": str(log)})

    def _refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        name = _host_name(host)
        if self.loopback and name not in LOOPBACK:
            return 403, f"this server answers to 127.0.0.1, localhost and [::1] only, not {host[:100]!r}"
        origin = headers.get("origin")
        if origin is not None and origin in self.config.cors_origin:
            return None
        if origin is not None and origin != "null":
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(origin)
                same = parts.netloc.lower() == host.lower() and parts.scheme in ("http", "https")
            except ValueError:
                same = False
            if not same:
                return 403, f"requests from the web origin {origin[:100]!r} are refused (ugpu serve --cors-origin allows one)"
        elif origin == "null" or headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross-site requests are refused (ugpu serve --cors-origin allows an origin)"
        return None


def _host_name(host: str) -> str:
    """The name in a Host header, without its port; brackets of an IPv6 address removed."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _size(limit: int) -> str:
    return f"{limit / 2**20:.0f} MB" if limit >= 2**20 else f"{limit // 1024} KB"


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": data})
