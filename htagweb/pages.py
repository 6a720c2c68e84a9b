"""The pages htagweb itself answers with when it cannot show the app."""

from __future__ import annotations

import base64
import html
import json
from importlib.resources import files
from typing import TYPE_CHECKING

from starlette.responses import HTMLResponse

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


def error_page(status: int, message: str, traceback: str | None = None, retry_after: int | None = None) -> HTMLResponse:
    details = f"<pre>{html.escape(traceback)}</pre>" if traceback else ""
    body = _TEMPLATE.format(title=_TITLES.get(status, "Error"), message=html.escape(message), details=details)
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return HTMLResponse(body, status_code=status, headers=headers)


def htag_error(message: str) -> str:
    """A payload htag's client shows in its error overlay."""
    return json.dumps({"action": "error", "traceback": message, "callback_id": None, "result": None})


def parano_script() -> str:
    return files("htagweb").joinpath("js/parano.js").read_text()


def bootstrap_html(identity_spki: bytes, server: str = "", kiosk: bool = False) -> str:
    """The page that runs the key exchange and installs the app, carrying no app content."""
    config = {"identity": base64.b64encode(identity_spki).decode(), "server": server, "kiosk": kiosk}
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Connecting securely…</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="referrer" content="no-referrer">
<style>body{{font-family:system-ui,sans-serif;max-width:46em;margin:4em auto;padding:0 1em;color:#222}}</style>
</head><body><p id="htagweb-parano-status">Connecting securely…</p>
<noscript>This application needs JavaScript: every exchange is encrypted in the page.</noscript>
<script>window.HTAGWEB_PARANO = {json.dumps(config)};</script>
<script>{parano_script()}</script>
</body></html>"""


def bootstrap_page(identity: IdentityKey) -> HTMLResponse:
    # the page's address is not repeated in the Referer of its channels (crypto/PROTOCOL.md §8)
    return HTMLResponse(bootstrap_html(identity.spki), headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
