"""Which pages may open a user's live connection (WebSocket, SSE) or reset their app.

A browser sends the user's cookie on a WebSocket handshake from any page of the
same *site*, and "same site" ignores the port: a page on ``http://localhost:9999``
could read and drive the app of ``http://localhost:8000``. So the page's
``Origin`` must name this server (the ``Host`` the browser asked for), or one of
``allowed_origins`` (deliberate embedding). A request without ``Origin`` comes
from a program, not a page of some site, and holds its cookie itself: let through.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Scope

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize(origin: str) -> str | None:
    """``scheme://host[:port]``, lower case, default port dropped; None if not an origin."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != DEFAULT_PORTS[parts.scheme] else "")


class OriginPolicy:
    def __init__(self, allowed_origins: Iterable[str] = (), trust_proxy_headers: bool = False) -> None:
        self.allowed: set[str] = set()
        for origin in allowed_origins:
            normal = normalize(origin)
            if normal is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
            self.allowed.add(normal)
        self.trust_proxy_headers = trust_proxy_headers

    def client(self, scope: Scope) -> str:
        """The client's address: the socket's, or with ``trust_proxy_headers`` the last
        ``X-Forwarded-For`` entry (the one our proxy added: earlier ones are the client's say)."""
        if self.trust_proxy_headers:
            forwarded = Headers(scope=scope).get("x-forwarded-for", "")
            if forwarded.strip():
                return forwarded.split(",")[-1].strip()
        client = scope.get("client")
        return str(client[0]) if client else ""

    def allows(self, scope: Scope) -> bool:
        """A WebSocket or SSE stream (fetches that always name their page's origin when cross-origin)."""
        origin = Headers(scope=scope).get("origin")
        return origin is None or self._accepts(origin, scope)

    def allows_navigation(self, scope: Scope) -> bool:
        """A page load that would change the user's app (htag's ``?n=`` reset): a link
        followed from another site carries no ``Origin``, but browsers say where it came
        from in ``Sec-Fetch-Site`` (``none``: typed or bookmarked by the user), and
        older ones in ``Referer``."""
        headers = Headers(scope=scope)
        referer = normalize(_origin_of(headers.get("referer", "")))
        site = headers.get("sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none") or referer in self.allowed
        return not headers.get("referer") or (referer is not None and self._accepts(referer, scope))

    def _accepts(self, origin: str, scope: Scope) -> bool:
        headers = Headers(scope=scope)
        normal = normalize(origin)
        if normal is None:  # "null" (sandboxed frames, file:// pages) or garbage
            return False
        if normal in self.allowed:
            return True
        host = headers.get("host", "")
        if self.trust_proxy_headers:
            host = headers.get("x-forwarded-host", host).split(",")[0]
        # the scheme is not compared: behind a TLS proxy this server sees http for an https page
        return normal.partition("://")[2] == _without_default_port(host.strip().lower())


def _without_default_port(host: str) -> str:
    name, colon, port = host.rpartition(":")
    return name if colon and port in ("80", "443") else host


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
