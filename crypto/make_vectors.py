"""Writes crypto/vectors.json from fixed inputs: python crypto/make_vectors.py

The vectors pin the wire format. Python (tests/test_parano_vectors.py, which also
recomputes them with the independent `cryptography` library) and the browser
client (tests/test_parano_browser.py) must both reproduce them; regenerate only
with a new protocol version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from Crypto.PublicKey import ECC

from htagweb import cipher


def scalar_key(seed: str) -> ECC.EccKey:
    d = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big") % int(ECC._curves["P-256"].order)
    return ECC.construct(curve="P-256", d=d)


def main() -> None:
    identity = cipher.IdentityKey(scalar_key("htagweb vectors identity"))
    client = scalar_key("htagweb vectors client ephemeral")
    server = scalar_key("htagweb vectors server ephemeral")
    secret = b"htagweb vectors server secret"
    sealer = cipher.TicketSealer([secret])
    origin = "http://127.0.0.1:8000"
    now, lifetime = 1_800_000_000, 86400
    client_pub = client.public_key().export_key(format="SEC1", compress=False)
    client_hello = bytes([cipher.VERSION, cipher.HELLO]) + client_pub + origin.encode()
    kx_id, ticket_nonce = bytes(range(16)), bytes(range(100, 112))
    server_hello, ticket = cipher.key_exchange(
        cipher.ClientHello.parse(client_hello),
        identity,
        sealer,
        lifetime,
        now=now,
        server_key=server,
        kx_id=kx_id,
        ticket_nonce=ticket_nonce,
    )
    server_pub = server.public_key().export_key(format="SEC1", compress=False)
    expires = int(now + lifetime)
    th = cipher.transcript_hash(client_hello, server_pub, expires)
    z = (client.public_key().pointQ * server.d).x.to_bytes(32, "big")
    sealed = server_hello[2 + 65 + 8 + 64 :]

    channels = []
    for kind, channel_id, server_nonce in (
        (b"H", bytes([0xC1] * 16), bytes([0x51] * 16)),
        (b"W", bytes([0xC2] * 16), bytes([0x52] * 16)),
        (b"S", bytes([0xC3] * 16), bytes([0x53] * 16)),
    ):
        kc = cipher.client_key(ticket.k_c2s, channel_id, kind)
        ks = cipher.server_key(ticket.k_s2c, channel_id, server_nonce, kind)
        c2s = [
            b'{"method":"GET","path":"/","headers":[],"page":"cGFnZS1pZC1vZi12ZWN0b3I"}\n',
            cipher.text_plaintext(b'{"id":"inc","event":"click","data":{"callback_id":"1"}}', 1),
        ]
        s2c = [
            b'{"status":200,"headers":[],"session":"credential"}\n<html>marker</html>',
            cipher.text_plaintext('{"action":"update","updates":{"count":"Count: 1 \u00e9\u20ac"}}'.encode()),
        ]
        c2s_boxes = [cipher.seal_box(kc, kind, cipher.C2S, channel_id, n, p) for n, p in enumerate(c2s)]
        s2c_boxes = [cipher.seal_box(ks, kind, cipher.S2C, channel_id, n, p) for n, p in enumerate(s2c)]
        open_message = cipher.OpenMessage(kind, channel_id, sealed, c2s_boxes[0]).encode()
        channels.append(
            {
                "kind": kind.decode(),
                "channel_id": channel_id.hex(),
                "server_nonce": server_nonce.hex(),
                "kc": kc.hex(),
                "ks": ks.hex(),
                "c2s": [{"counter": n, "plaintext": p.hex(), "box": b.hex()} for n, (p, b) in enumerate(zip(c2s, c2s_boxes, strict=True))],
                "s2c": [{"counter": n, "plaintext": p.hex(), "box": b.hex()} for n, (p, b) in enumerate(zip(s2c, s2c_boxes, strict=True))],
                "open_message": open_message.hex(),
                "accept_message": cipher.accept_message(server_nonce, s2c_boxes[0]).hex(),
                "data_message": cipher.data_message(s2c_boxes[1]).hex(),
            }
        )

    vectors = {
        "description": "htagweb parano protocol version 2 test vectors (crypto/PROTOCOL.md); hex unless noted",
        "label": cipher.LABEL.decode(),
        "identity": {
            "private_pkcs8": identity.key.export_key(format="DER").hex(),
            "public_spki": identity.spki.hex(),
            "fingerprint": identity.fingerprint,
        },
        "ticket_secret": secret.hex(),
        "ticket_key": sealer.keys[0].hex(),
        "key_exchange": {
            "client_private_pkcs8": client.export_key(format="DER").hex(),
            "client_pub": client_pub.hex(),
            "origin": origin,
            "client_hello": client_hello.hex(),
            "server_private_pkcs8": server.export_key(format="DER").hex(),
            "server_pub": server_pub.hex(),
            "now": now,
            "lifetime": lifetime,
            "expires": expires,
            "transcript_hash": th.hex(),
            "shared_secret": z.hex(),
            "k_c2s": ticket.k_c2s.hex(),
            "k_s2c": ticket.k_s2c.hex(),
            "signature": identity.sign(th).hex(),
            "kx_id": kx_id.hex(),
            "ticket_nonce": ticket_nonce.hex(),
            "ticket": sealed.hex(),
            "server_hello": server_hello.hex(),
        },
        "channels": channels,
    }
    path = Path(__file__).with_name("vectors.json")
    path.write_text(json.dumps(vectors, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
