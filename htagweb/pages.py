"""The pages htagweb itself answers with when it cannot show the app."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import html
import json
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, TypeVar

from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

if TYPE_CHECKING:
    from .cipher import IdentityKey

_TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:46em;margin:4em auto;padding:0 1em;color:#222}}
h1{{font-size:1.4em}}pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}}</style>
</head><body><h1>{title}</h1><p>{message}</p>{details}</body></html>"""

_TITLES = {
    403: "Session required",
    404: "Not found",
    429: "Too many new sessions",
    500: "Application error",
    502: "Application unavailable",
    503: "Server busy",
    504: "Application timeout",
    507: "Application over its limits",
}


#: seconds a 429 or 503 page tells the browser to wait before trying again
RETRY_AFTER = 30

R = TypeVar("R", bound=Response)


def error_page(status: int, message: str, traceback: str | None = None) -> HTMLResponse:
    """The page of an error; a 429 or 503 (a limit, not a fault) says when to try again."""
    details = f"<pre>{html.escape(traceback)}</pre>" if traceback else ""
    body = _TEMPLATE.format(title=_TITLES.get(status, "Error"), message=html.escape(message), details=details)
    return retry_later(HTMLResponse(body, status_code=status))


def retry_later(response: R) -> R:
    """``response``, saying when to try again if it is a 429 or a 503 (a limit, not a fault)."""
    if response.status_code in (429, 503):
        response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str, traceback: str | None = None) -> None:
    """Refuse a request with the page of ``status``; a WebSocket not yet accepted with an HTTP
    answer of ``status`` where the server can send one, else a close whose code and reason
    say it (a bare 403 for the client)."""
    if scope["type"] != "websocket":
        await error_page(status, message, traceback)(scope, receive, send)
    elif "websocket.http.response" in scope.get("extensions", {}):
        await WebSocket(scope, receive, send).send_denial_response(retry_later(PlainTextResponse(message, status)))
    else:
        code = 1013 if status in (429, 503) else 4403 if status == 403 else 1011
        await send({"type": "websocket.close", "code": code, "reason": message[:120]})


def htag_error(message: str) -> str:
    """A payload htag's client shows in its error overlay."""
    return json.dumps({"action": "error", "traceback": message, "callback_id": None, "result": None})


def htag_refusal(message: str) -> JSONResponse:
    """The answer to an htag event that is refused: htag's client shows the words of a 200
    only (of any other answer, its status code), so the refusal is said in its body."""
    return JSONResponse({"status": "error", "payloads": [htag_error(message)]})


def script(name: str) -> str:
    """A script of ours, from htagweb/js/ (package data)."""
    return files("htagweb").joinpath(f"js/{name}").read_text()


def compact(source: str) -> str:
    """``source`` without its whole-line comments and indentation: the reasons stay in the
    file, not in every page (for our small scripts, with no multi-line strings)."""
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("//"))


@dataclass(frozen=True)
class FallbackBundle:
    """The noble crypto bundle (built by setup.py) that pages without WebCrypto load."""

    script: bytes
    gzipped: bytes  # what most browsers are sent: a third of the size
    path: str  # named by its hash: cached for good, never stale
    integrity: str  # Subresource Integrity: the page runs these bytes or nothing

    @property
    def config(self) -> dict[str, str]:
        return {"src": self.path, "integrity": self.integrity}


@functools.cache
def fallback_bundle() -> FallbackBundle | None:
    """None where the package was built without Node.js and npm."""
    try:
        script = files("htagweb").joinpath("js/noble.min.js").read_bytes()
    except FileNotFoundError:
        return None
    path = f"/_htagweb/noble-{hashlib.sha256(script).hexdigest()[:16]}.js"
    integrity = "sha384-" + base64.b64encode(hashlib.sha384(script).digest()).decode()
    return FallbackBundle(script, gzip.compress(script, 9, mtime=0), path, integrity)


def bootstrap_html(identity_spki: bytes, server: str = "", kiosk: bool = False) -> str:
    """The page that runs the key exchange and installs the app, carrying no app content.
    A page of a server (not a kiosk file, always a secure context) may load the noble bundle."""
    bundle = None if kiosk else fallback_bundle()
    config = {"identity": base64.b64encode(identity_spki).decode(), "server": server, "kiosk": kiosk}
    if bundle:
        config["fallback"] = bundle.config
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Connecting securely…</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer">
<style>body{{font-family:system-ui,sans-serif;max-width:46em;margin:4em auto;padding:0 1em;color:#222}}</style>
</head><body><p id="htagweb-parano-status">Connecting securely…</p>
<noscript>This application needs JavaScript: every exchange is encrypted in the page.</noscript>
<script>window.HTAGWEB_PARANO = {json.dumps(config)};</script>
<script>{script("parano.js")}</script>
</body></html>"""


def bootstrap_page(identity: IdentityKey) -> HTMLResponse:
    # the page's address is not repeated in the Referer of its channels (crypto/PROTOCOL.md §8)
    return HTMLResponse(bootstrap_html(identity.spki), headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
