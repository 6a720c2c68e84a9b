"""What a parano server serves for pages without WebCrypto (crypto/PROTOCOL.md §8), at the
HTTP level: the noble bundle under its hash with the integrity the bootstrap names, and the
refusal beacon, which carries nothing and logs nothing of what it is sent."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx
from helpers import server_source

from htagweb.pages import bootstrap_html, fallback_bundle


def configuration(page: str) -> dict:
    return json.loads(re.search(r"window\.HTAGWEB_PARANO = (\{.*?\});</script>", page).group(1))


def test_the_bootstrap_names_the_bundle_the_server_serves(server):
    srv = server(server_source(parano=True))
    with httpx.Client(base_url=srv.url) as http:
        fallback = configuration(http.get("/").text)["fallback"]
        bundle = http.get(fallback["src"])
        assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
        assert "immutable" in bundle.headers["cache-control"] and bundle.headers["x-content-type-options"] == "nosniff"
        assert fallback["integrity"] == "sha384-" + base64.b64encode(hashlib.sha384(bundle.content).digest()).decode()
        assert hashlib.sha256(bundle.content).hexdigest().startswith(fallback["src"].removeprefix("/_htagweb/noble-")[:-3])
        assert http.get("/_htagweb/noble-0000000000000000.js").status_code != 200  # no other name serves it
        assert bundle.headers["content-encoding"] == "gzip" and bundle.num_bytes_downloaded < len(bundle.content) / 2
        identity = http.get(fallback["src"], headers={"accept-encoding": "identity"})
        assert "content-encoding" not in identity.headers and identity.content == bundle.content
    assert "not built" not in srv.log


def test_a_kiosk_file_never_loads_the_bundle():
    """A kiosk file is opened from disk, a secure context: WebCrypto, and no script from the network."""
    assert fallback_bundle() is not None
    spki = bytes(91)
    assert "fallback" not in configuration(bootstrap_html(spki, server="http://192.0.2.1:8000/", kiosk=True))
    assert "fallback" in configuration(bootstrap_html(spki))


def test_the_refusal_beacon_logs_a_fixed_reason_never_what_it_was_sent(server):
    srv = server(server_source(parano=True))
    secret = "typed-" + "x" * 20
    with httpx.Client(base_url=srv.url) as http:
        assert http.post("/_htagweb/refused", content=secret.encode()).status_code == 204
        assert http.post("/_htagweb/refused", content=b"no-crypto" * 1000).status_code == 204  # too long: no reason
        assert http.get("/_htagweb/refused").status_code == 405
    srv.wait_log(r"WARNING.*refused a visitor on plain HTTP to '127\.0\.0\.1:\d+': an unknown reason \(1 such report")
    assert secret not in srv.log and "no-crypto" not in srv.log
