"""Server-side sessions: a signed cookie naming a session, its data in a store.

The cookie holds only a random id signed with itsdangerous. The data lives in a
:class:`~htagweb.stores.SessionStore`; Starlette routes see it as
``request.session`` and htag apps as ``self.session`` (or
``self.request.session``): the same keys, merged key by key.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, Signer, TimestampSigner
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .pages import htag_refusal, refuse
from .stores import Items, SessionStore, StoreUnavailable

logger = logging.getLogger("htagweb")

COOKIE_NAME = "htagweb_session"
#: the name over HTTPS: browsers then refuse it from a sibling subdomain or a plain-HTTP page
SECURE_COOKIE_NAME = "__Host-" + COOKIE_NAME
SCOPE_NEW = "htagweb.new_session"
#: set by the parano layer: the decrypted exchange's session comes from its ticket
SCOPE_PARANO = "htagweb.parano"
#: where a browser whose session was rotated by its app over a live connection fetches its new cookie
ROTATION_PATH = "/_htagweb/session"
ROTATION_HEADER = "x-htagweb-rotation"
#: seconds a rotation ticket stays valid (it is used by the page at once)
ROTATION_TICKET_AGE = 60
#: a cookie older than this part of the maximum age is sent again on the next response (rolling expiry)
RENEW_FRACTION = 1 / 14
#: what a user reads when the session store cannot be read or written (a 503)
STORE_DOWN = "The session store is unavailable: try again in a moment."


def new_session_id() -> str:
    return secrets.token_urlsafe(24)


def secret_signer(secrets: list[bytes], salt: str) -> TimestampSigner:
    """Signs with the first secret, still accepts the others (rotation); the signature
    carries its time, so that what is too old can be refused."""
    return TimestampSigner(list(reversed(secrets)), salt=salt)


def make_signer(secrets: list[bytes]) -> TimestampSigner:
    """The session cookie's signer: a cookie older than the session's maximum age is refused."""
    return secret_signer(secrets, "htagweb.session")


def samesite_attribute(samesite: str) -> str:
    """The cookie's ``SameSite`` value for the ``cookie_samesite`` option; ValueError if none."""
    if samesite.lower() not in ("lax", "strict", "none"):
        raise ValueError(f"cookie_samesite must be 'lax', 'strict' or 'none', not {samesite!r}")
    return samesite.capitalize()


def make_rotation_signer(secrets: list[bytes]) -> TimestampSigner:
    """Signs the tickets with which a rotated session's page fetches its new cookie."""
    return secret_signer(secrets, "htagweb.rotation")


def rotation_script(signer: TimestampSigner, root_path: str, old: str, new: str) -> str:
    """JavaScript for the page of a session rotated over its live connection (where no
    cookie can be set): it fetches its new cookie with a ticket valid for a minute."""
    ticket = signer.sign(f"{old} {new}").decode()
    url = json.dumps(root_path + ROTATION_PATH)
    return f'fetch({url}, {{method: "POST", credentials: "same-origin", headers: {{"X-Htagweb-Rotation": {json.dumps(ticket)}}}}})'


def cookie_value(connection: HTTPConnection) -> str | None:
    return connection.cookies.get(SECURE_COOKIE_NAME) or connection.cookies.get(COOKIE_NAME)


def verified_cookie(signer: Signer, connection: HTTPConnection, max_age: float | None = None) -> tuple[str | None, float]:
    """(session id, seconds since the cookie was signed) of a verified cookie; (None, 0) otherwise."""
    cookie = cookie_value(connection)
    if not cookie:
        return None, 0.0
    client = connection.client.host if connection.client else "?"
    try:
        if isinstance(signer, TimestampSigner):
            sid, signed_at = signer.unsign(cookie, max_age=max_age, return_timestamp=True)  # type: ignore[call-overload]  # float seconds work
            return sid.decode(), max(0.0, time.time() - signed_at.timestamp())
        return signer.unsign(cookie).decode(), 0.0
    except SignatureExpired:
        logger.info("expired session cookie from %s: new session", client)
    except BadSignature:
        logger.warning("rejected a forged or tampered session cookie from %s: new session", client)
    return None, 0.0


class Session(MutableMapping[str, Any]):
    """A session's data, tracking which keys changed since it was last synced
    with the store, so that only those are written back."""

    def __init__(self, sid: str, version: int = 0, items: Items | None = None) -> None:
        self.sid = sid
        self.version = version
        #: the store's generation when this data was read (see SessionStore.generation)
        self.generation: int | None = None
        self._synced: Items = dict(items or {})
        self._data: dict[str, Any] = {k: json.loads(v) for k, v in self._synced.items()}
        #: rotate() was called and not yet applied
        self.rotated = False
        #: read or written (by a route, or given to a user process): a new session then gets its
        #: cookie; one nobody used costs nothing (a probe, a favicon, a 404 or a refused visitor)
        self.used = False

    def __getitem__(self, key: str) -> Any:
        self.used = True
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        json.dumps(value)  # fail here, at the caller, for a value a store cannot keep
        self.used = True
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        self.used = True
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        self.used = True
        return iter(self._data)

    def __len__(self) -> int:
        self.used = True
        return len(self._data)

    def __repr__(self) -> str:
        return f"Session({self._data!r})"

    def rotate(self) -> None:
        """Give the session a new id, keeping its data; the old id is dead (its data and
        user processes move to the new one).

        Call it at login: an id planted in the browser before (by a plain-HTTP attacker,
        a sibling subdomain) then grants nothing. In a route, ``sid`` is the new id at
        once and the response carries its cookie. In the app, the front applies it when
        the app answers: in the answer's cookie, or, over a live WebSocket or SSE stream,
        by having the page fetch its new cookie."""
        self.sid = new_session_id()
        self.rotated = self.used = True

    def snapshot(self) -> dict[str, Any]:
        """The data as last synced with the store, for a user process."""
        return {"version": self.version, "items": dict(self._synced)}

    def changes(self) -> tuple[Items, list[str]]:
        """(keys set or modified with their JSON, keys deleted) since last sync."""
        current = {k: json.dumps(v, separators=(",", ":")) for k, v in self._data.items()}
        changed = {k: v for k, v in current.items() if self._synced.get(k) != v}
        deleted = [k for k in self._synced if k not in current]
        return changed, deleted

    def mark_synced(self, changed: Items, deleted: list[str], version: int) -> None:
        self._synced.update(changed)
        for key in deleted:
            self._synced.pop(key, None)
        self.version = version

    def merge(self, version: int, items: Items) -> None:
        """Take the store's newer data, keeping keys changed here and not yet synced."""
        changed, deleted = self.changes()
        self._synced = dict(items)
        self._data = {k: json.loads(v) for k, v in items.items()}
        for key, value in changed.items():
            self._data[key] = json.loads(value)
        for key in deleted:
            self._data.pop(key, None)
        self.version = version


class PlaintextSession(Session):
    """``request.session`` of a request that reached a parano server in clear: no
    session at all (crypto/PROTOCOL.md §5). Reading finds nothing; writing raises,
    so that a route never believes it stored something."""

    def __init__(self) -> None:
        super().__init__("")

    def __setitem__(self, key: str, value: Any) -> None:
        raise RuntimeError(
            "parano mode: this request came in clear, not through the encrypted channel, so it has no session. "
            "Call this route from the page (fetch), where it runs inside the channel with the user's session."
        )

    __delitem__ = __setitem__  # type: ignore[assignment]


async def save(store: SessionStore, session: Session) -> None:
    changed, deleted = session.changes()
    if changed or deleted:
        session.mark_synced(changed, deleted, await store.update(session.sid, changed, deleted))


async def move(store: SessionStore, old: str, new: str) -> int:
    """The stored data of ``old`` under ``new``, ``old`` deleted: the new version (0: no data)."""
    _, items = await store.load(old)
    version = await store.update(new, items, []) if items else 0
    await store.delete(old)
    return version


#: told when a session id changed (old, new): the user processes of the old id move with it
OnRotate = Callable[[str, str], Awaitable[None]]


class SessionMiddleware:
    """Resolves the session cookie to a :class:`Session` in ``scope["session"]``
    and saves its changes before the response starts.

    A missing, forged, tampered or expired cookie gets a fresh session (logged when
    the cookie was present but did not verify): never someone else's data. The
    cookie's signature carries its time: it is refused after the store's maximum
    age and sent again, renewed, on activity (rolling expiry). Every response
    varies on the cookie (``Vary: Cookie``), so no shared cache serves one user's
    page to another.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        signer: TimestampSigner,
        *,
        https_only: bool = False,
        trust_proxy_headers: bool = False,
        samesite: str = "lax",
        on_rotate: OnRotate | None = None,
        parano: bool = False,
    ) -> None:
        self.app = app
        #: a parano server names sessions only inside its channels: no cookie is read or set
        self.parano = parano
        self.store = store
        self.signer = signer
        self.tickets = TimestampSigner(signer.secret_keys, salt="htagweb.rotation")  # as make_rotation_signer
        self.https_only = https_only
        self.trust_proxy_headers = trust_proxy_headers
        self.samesite = samesite_attribute(samesite)
        self.on_rotate = on_rotate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        parano = scope.get(SCOPE_PARANO)
        if self.parano and parano is None:
            scope["session"], scope[SCOPE_NEW] = PlaintextSession(), True
            await self.app(scope, receive, send)
            return
        if parano:
            sid, is_new, age = parano["sid"], parano["new"], 0.0
        else:
            sid, age = verified_cookie(self.signer, connection, self.store.max_age)
            if scope["type"] == "http" and scope["path"] == ROTATION_PATH:
                await self._rotation_ticket(connection, sid, scope, receive, send)
                return
            is_new = sid is None
        if sid is None:
            sid = new_session_id()
        generation = self.store.generation()  # read first: a write meanwhile changes it
        try:
            version, items = (0, {}) if is_new else await self.store.load(sid)  # a new id has nothing stored
        except StoreUnavailable as exc:
            await _refused_by_store(scope, receive, send, sid, exc)
            return
        session = Session(sid, version, items)
        session.generation = generation
        scope["session"] = session
        scope[SCOPE_NEW] = is_new
        renew = not is_new and age > self.store.max_age * RENEW_FRACTION
        refused = False  # the store failed as the answer started: the user reads so instead

        async def send_wrapper(message: Message) -> None:
            nonlocal refused
            if refused:
                return
            if message["type"] == "http.response.start":
                try:
                    await self._saved(session, sid, renew)
                except StoreUnavailable as exc:
                    refused = True
                    await _refused_by_store(scope, receive, send, sid, exc)
                    return
                headers = MutableHeaders(scope=message)
                headers.add_vary_header("Cookie")
                if not self.parano and ((is_new and session.used) or renew or session.sid != sid):
                    headers.append("Set-Cookie", self.cookie(session.sid, connection))
            elif message["type"] == "websocket.close":
                try:
                    await save(self.store, session)
                except StoreUnavailable as exc:  # the socket closes anyway
                    logger.warning("session %s: its changes were not saved: %s", sid[:8], exc)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _saved(self, session: Session, sid: str, renew: bool) -> None:
        """Before an answer starts: a rotation by a route applied, the changes written, a
        renewed cookie's session kept as long."""
        if session.rotated:
            await self.rotate(session, sid)
        await save(self.store, session)
        if renew and not self.parano:
            await self.store.touch(session.sid)

    async def rotate(self, session: Session, old: str) -> None:
        """Apply ``session.rotate()``: its data and user processes move from ``old`` to ``session.sid``."""
        session.rotated = False
        version = await move(self.store, old, session.sid)
        session.version = version
        if self.on_rotate is not None:
            await self.on_rotate(old, session.sid)
        logger.info("session %s rotated to %s", old[:8], session.sid[:8])

    async def _rotation_ticket(self, connection: HTTPConnection, sid: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        """The new cookie for a ticket the app's live connection handed to its page,
        only to the browser holding the old one."""
        try:
            ticket = self.tickets.unsign(connection.headers.get(ROTATION_HEADER, ""), max_age=ROTATION_TICKET_AGE)
            old, _, new = ticket.decode().partition(" ")
        except BadSignature:
            old = new = ""
        if scope["method"] != "POST" or not new or old != sid:
            await Response("invalid rotation ticket", status_code=403, headers={"Vary": "Cookie"})(scope, receive, send)
            return
        headers = {"Set-Cookie": self.cookie(new, connection), "Cache-Control": "no-store", "Vary": "Cookie"}
        await Response(status_code=204, headers=headers)(scope, receive, send)

    def cookie(self, sid: str, connection: HTTPConnection) -> str:
        value = self.signer.sign(sid).decode()
        scheme = connection.url.scheme
        if self.trust_proxy_headers:
            scheme = connection.headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
        # SameSite=None is ignored by browsers without Secure
        secure = self.https_only or scheme in ("https", "wss") or self.samesite == "None"
        name = SECURE_COOKIE_NAME if secure else COOKIE_NAME
        flags = f"; Path=/; Max-Age={int(self.store.max_age)}; HttpOnly; SameSite={self.samesite}"
        return f"{name}={value}{flags}" + ("; Secure" if secure else "")


async def _refused_by_store(scope: Scope, receive: Receive, send: Send, sid: str, exc: StoreUnavailable) -> None:
    """A request the session store failed: refused with a 503, which the next one may not
    get; one line in the log, naming the cause, not the session's data."""
    logger.warning("session store unavailable (session %s): %s", sid[:8], exc)
    if scope["type"] == "http" and any(name == b"x-htag-token" for name, _ in scope["headers"]):  # an htag event: for its overlay
        await htag_refusal(STORE_DOWN)(scope, receive, send)
    else:
        await refuse(scope, receive, send, 503, STORE_DOWN)
