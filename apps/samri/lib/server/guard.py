"""Cross-origin and body-size policy of the server, replacing MONAI Label 0.8.5's "any origin" CORS.

MONAI Label builds its app with ``CORSMiddleware(allow_origins=["*"], allow_credentials=True)``
unless ``MONAI_LABEL_CORS_ORIGINS`` is set, so any web page open in an annotator's browser could
read, overwrite and delete studies on ``127.0.0.1``. SAMRI's default instead:

* a request without an ``Origin`` header (3D Slicer, curl, scripts) is served;
* a same-origin browser request (OHIF at ``/ohif/`` on this server) is served: its ``Origin`` equals
  ``scheme://Host`` and the host is loopback, an IP literal, this machine's name or listed (so a
  DNS-rebinding name is not trusted by default);
* an origin listed in ``--conf cors_origins`` (comma-separated) or ``MONAI_LABEL_CORS_ORIGINS`` is
  served with CORS headers (credentials allowed);
* any other origin gets 403 before anything runs, preflight included (a cross-site form POST is
  refused too, not only hidden from the page).

Request bodies are limited to ``max_body_mb`` (Starlette's `RequestBodyLimitMiddleware`: 413).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from typing import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)


def _host_name(host: str) -> str:
    """``host[:port]`` (an HTTP Host header or URL netloc) -> the lower-case host name."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _trusted_host(host: str, allowed_hosts: Iterable[str]) -> bool:
    """Loopback, an IP literal, this machine's own name, or a host of an allowed origin."""
    name = _host_name(host)
    own = {socket.gethostname().lower(), socket.getfqdn().lower()}
    if name in LOOPBACK_NAMES or name in own or name in {_host_name(h) for h in allowed_hosts}:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def origin_allowed(origin: str, *, scheme: str, host: str, allowed_origins: Iterable[str]) -> bool:
    """Whether a browser request from ``origin`` to ``scheme://host`` may run (see the module docstring)."""
    allowed = {o.rstrip("/") for o in allowed_origins}
    if origin.rstrip("/") in allowed:
        return True
    parts = urlsplit(origin)
    same = parts.scheme == scheme and parts.netloc.lower() == host.lower()
    allowed_hosts = {urlsplit(o).netloc for o in allowed}
    return same and _trusted_host(host, allowed_hosts)


class OriginGuard:
    """ASGI middleware: 403 for a browser request from an origin that is not allowed."""

    def __init__(self, app: ASGIApp, *, allowed_origins: Iterable[str]) -> None:
        self.app = app
        self.allowed_origins = tuple(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not origin_allowed(origin, scheme=scope.get("scheme", "http"),
                                                         host=headers.get("host", ""),
                                                         allowed_origins=self.allowed_origins):
                logger.warning("refused %s %s from origin %r", scope.get("method"), scope.get("path"), origin)
                body = json.dumps({"detail": f"Origin={origin!r}: cross-origin requests are not allowed; "
                                             "list the origin in --conf cors_origins to allow it"}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install_guard(fastapi_app, *, allowed_origins: Iterable[str], max_body_bytes: int) -> None:
    """Replace the built CORS layer of ``fastapi_app`` by guard + CORS(allowed) + body limit.

    Must run after the middleware stack was built (it is, once the server's lifespan started: the app
    is constructed there). Raises RuntimeError if the stack does not hold the expected CORS layer.
    """
    parent = fastapi_app.middleware_stack
    if parent is None:
        raise RuntimeError("the server's middleware stack is not built yet; cannot install the origin guard")
    while getattr(parent, "app", None) is not None and not isinstance(parent.app, CORSMiddleware):
        parent = parent.app
    cors = getattr(parent, "app", None)
    if not isinstance(cors, CORSMiddleware):
        raise RuntimeError("MONAI Label's CORSMiddleware was not found in the server's middleware stack; "
                           "the SAMRI hardening was written for monailabel 0.8.5")
    allowed = tuple(allowed_origins)
    inner = RequestBodyLimitMiddleware(cors.app, max_body_size=max_body_bytes)
    parent.app = OriginGuard(CORSMiddleware(inner, allow_origins=list(allowed), allow_credentials=True,
                                            allow_methods=["*"], allow_headers=["*"]),
                             allowed_origins=allowed)
    logger.info("cross-origin requests allowed from %s; request bodies up to %d MB",
                list(allowed) or "no other origin", max_body_bytes // (1 << 20))


__all__ = ["OriginGuard", "install_guard", "origin_allowed"]
