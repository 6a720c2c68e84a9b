"""``python -m htagweb kiosk URL --out kiosk.html``: a bootstrap file with the
server identity key pinned (crypto/PROTOCOL.md §8)."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .cipher import fingerprint
from .pages import bootstrap_html


class KioskError(Exception):
    pass


def fetch_identity(url: str) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise KioskError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/_htagweb/identity", timeout=10) as response:
        return base64.b64decode(json.load(response)["public_key"])


def write_kiosk(url: str, out: Path, expected_fingerprint: str | None) -> str:
    """Write the kiosk file; return the fingerprint of the key pinned in it."""
    spki = fetch_identity(url)
    actual = fingerprint(spki)
    if expected_fingerprint and expected_fingerprint != actual:
        raise KioskError(f"the server at {url} presents identity {actual}, not {expected_fingerprint}: refusing to pin it")
    out.write_text(bootstrap_html(spki, server=url, kiosk=True))
    return actual
