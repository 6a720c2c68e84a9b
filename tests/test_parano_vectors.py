"""crypto/vectors.json, checked twice: against htagweb.cipher, and recomputed from
the spec with the library htagweb.cipher does not use for that step (`cryptography`
for the key exchange and the ticket, pycryptodome for the channel boxes)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from Crypto.Cipher import AES
from Crypto.PublicKey import ECC
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from htagweb import cipher

V = json.loads((Path(__file__).parent.parent / "crypto" / "vectors.json").read_text())
KX = V["key_exchange"]
LABEL = V["label"].encode()
h = bytes.fromhex


def independent_hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def test_key_exchange_reproduced_by_htagweb():
    identity = cipher.IdentityKey(ECC.import_key(h(V["identity"]["private_pkcs8"])))
    assert identity.spki.hex() == V["identity"]["public_spki"] and identity.fingerprint == V["identity"]["fingerprint"]
    sealer = cipher.TicketSealer([h(V["ticket_secret"])])
    assert sealer.keys[0].hex() == V["ticket_key"]
    server_hello, ticket = cipher.key_exchange(
        cipher.ClientHello.parse(h(KX["client_hello"])),
        identity,
        sealer,
        KX["lifetime"],
        now=KX["now"],
        server_key=ECC.import_key(h(KX["server_private_pkcs8"])),
        kx_id=h(KX["kx_id"]),
        ticket_nonce=h(KX["ticket_nonce"]),
    )
    assert server_hello.hex() == KX["server_hello"]
    assert (ticket.k_c2s.hex(), ticket.k_s2c.hex()) == (KX["k_c2s"], KX["k_s2c"])
    opened = sealer.open(h(KX["ticket"]))
    assert opened == ticket and not opened.expired(now=KX["now"]) and opened.expired(now=KX["expires"])


def test_key_exchange_recomputed_independently():
    client = serialization.load_der_private_key(h(KX["client_private_pkcs8"]), None)
    server_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), h(KX["server_pub"]))
    client_pub = client.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert client_pub.hex() == KX["client_pub"]
    assert h(KX["client_hello"]) == bytes([2, 1]) + client_pub + KX["origin"].encode()
    z = client.exchange(ec.ECDH(), server_pub)
    assert z.hex() == KX["shared_secret"]
    th = hashlib.sha256(LABEL + h(KX["client_hello"]) + h(KX["server_pub"]) + struct.pack(">Q", KX["expires"])).digest()
    assert th.hex() == KX["transcript_hash"]
    assert independent_hkdf(z, th, LABEL + b" c2s").hex() == KX["k_c2s"]
    assert independent_hkdf(z, th, LABEL + b" s2c").hex() == KX["k_s2c"]
    identity = serialization.load_der_public_key(h(V["identity"]["public_spki"]))
    sig = h(KX["signature"])
    identity.verify(
        encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
        LABEL + b" signature" + th,
        ec.ECDSA(hashes.SHA256()),
    )
    hello = h(KX["server_hello"])
    assert hello[:2] == b"\x02\x02" and hello[2:67] == h(KX["server_pub"]) and hello[67:75] == struct.pack(">Q", KX["expires"])
    assert hello[75:139] == sig and hello[139:] == h(KX["ticket"])
    ticket_key = independent_hkdf(h(V["ticket_secret"]), b"", LABEL + b" ticket")
    ticket = h(KX["ticket"])
    assert ticket[:4] == hashlib.sha256(ticket_key).digest()[:4]
    plaintext = AESGCM(ticket_key).decrypt(ticket[4:16], ticket[16:], LABEL + b" ticket" + ticket[:4])
    assert plaintext == struct.pack(">BQ", 2, KX["expires"]) + h(KX["kx_id"]) + h(KX["k_c2s"]) + h(KX["k_s2c"])


@pytest.mark.parametrize("channel", V["channels"], ids=lambda c: c["kind"])
def test_channel_boxes(channel):
    kind, channel_id, server_nonce = channel["kind"].encode(), h(channel["channel_id"]), h(channel["server_nonce"])
    kc = independent_hkdf(h(KX["k_c2s"]), channel_id, LABEL + b" c2s " + kind)
    ks = independent_hkdf(h(KX["k_s2c"]), channel_id + server_nonce, LABEL + b" s2c " + kind)
    assert (kc.hex(), ks.hex()) == (channel["kc"], channel["ks"])
    assert cipher.client_key(h(KX["k_c2s"]), channel_id, kind) == kc
    assert cipher.server_key(h(KX["k_s2c"]), channel_id, server_nonce, kind) == ks
    for direction, key, boxes in ((b">", kc, channel["c2s"]), (b"<", ks, channel["s2c"])):
        for item in boxes:
            counter, plaintext = item["counter"], h(item["plaintext"])
            nonce = struct.pack(">IQ", 0, counter)
            aad = LABEL + kind + direction + channel_id + struct.pack(">Q", counter)
            independent = AES.new(key, AES.MODE_GCM, nonce=nonce)
            independent.update(aad)
            ciphertext, tag = independent.encrypt_and_digest(plaintext)
            assert h(item["box"]) == struct.pack(">Q", counter) + ciphertext + tag
            assert cipher.seal_box(key, kind, direction, channel_id, counter, plaintext) == h(item["box"])
            assert cipher.open_box(key, kind, direction, channel_id, counter, h(item["box"])) == plaintext
    opened = cipher.OpenMessage.parse(h(channel["open_message"]))
    assert (opened.kind, opened.channel_id, opened.ticket.hex()) == (kind, channel_id, KX["ticket"])
    assert opened.box.hex() == channel["c2s"][0]["box"]
    assert h(channel["accept_message"]) == bytes([2, 0x12]) + server_nonce + h(channel["s2c"][0]["box"])
    assert h(channel["data_message"]) == bytes([2, 0x11]) + h(channel["s2c"][1]["box"])
    # the server's end of the channel, with the vector's nonce, answers exactly so
    sealer = cipher.TicketSealer([h(V["ticket_secret"])])
    server_end = cipher.Channel(sealer.open(h(KX["ticket"])), kind, channel_id, server_nonce)
    assert server_end.open(opened.box) == h(channel["c2s"][0]["plaintext"])
    assert server_end.seal(h(channel["s2c"][0]["plaintext"])).hex() == channel["accept_message"]
    assert server_end.seal(h(channel["s2c"][1]["plaintext"])).hex() == channel["data_message"]
