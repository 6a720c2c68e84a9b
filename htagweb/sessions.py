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
from collections.abc import Iterator, MutableMapping
from typing import Any

from itsdangerous import BadSignature, Signer
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .stores import Items, SessionStore

logger = logging.getLogger("htagweb")

COOKIE_NAME = "htagweb_session"
SCOPE_NEW = "htagweb.new_session"
#: set by the parano layer: the decrypted exchange's session comes from its ticket
SCOPE_PARANO = "htagweb.parano"


def make_signer(secrets: list[bytes]) -> Signer:
    """Signs with the first secret, still accepts the others (rotation)."""
    return Signer(list(reversed(secrets)), salt="htagweb.session")


def cookie_session_id(signer: Signer, connection: HTTPConnection) -> str | None:
    """The session id of a verified cookie; None if absent; logs a forged one."""
    cookie = connection.cookies.get(COOKIE_NAME)
    if not cookie:
        return None
    try:
        return signer.unsign(cookie).decode()
    except BadSignature:
        client = connection.client.host if connection.client else "?"
        logger.warning("rejected a forged or tampered session cookie from %s: new session", client)
        return None


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

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        json.dumps(value)  # fail here, at the caller, for a value a store cannot keep
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Session({self._data!r})"

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


class SessionMiddleware:
    """Resolves the session cookie to a :class:`Session` in ``scope["session"]``
    and saves its changes before the response starts.

    A missing, forged or tampered cookie gets a fresh session (logged when the
    cookie was present but did not verify): never someone else's data.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: SessionStore,
        signer: Signer,
        *,
        https_only: bool = False,
        trust_proxy_headers: bool = False,
        parano: bool = False,
    ) -> None:
        self.app = app
        #: a parano server names sessions only inside its channels: no cookie is read or set
        self.parano = parano
        self.store = store
        self.signer = signer
        self.https_only = https_only
        self.trust_proxy_headers = trust_proxy_headers

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
            sid, is_new = parano["sid"], parano["new"]
        else:
            sid = cookie_session_id(self.signer, connection)
            is_new = sid is None
        if sid is None:
            sid = secrets.token_urlsafe(24)
        generation = self.store.generation()  # read first: a write meanwhile changes it
        version, items = await self.store.load(sid)
        session = Session(sid, version, items)
        session.generation = generation
        scope["session"] = session
        scope[SCOPE_NEW] = is_new

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                await save(self.store, session)
                if is_new and not self.parano:
                    headers = MutableHeaders(scope=message)
                    headers.append("Set-Cookie", self._cookie(sid, connection))
            elif message["type"] == "websocket.close":
                await save(self.store, session)
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _cookie(self, sid: str, connection: HTTPConnection) -> str:
        value = self.signer.sign(sid).decode()
        scheme = connection.url.scheme
        if self.trust_proxy_headers:
            scheme = connection.headers.get("x-forwarded-proto", scheme).split(",")[0].strip()
        secure = "; Secure" if self.https_only or scheme in ("https", "wss") else ""
        return f"{COOKIE_NAME}={value}; Path=/; Max-Age={int(self.store.max_age)}; HttpOnly; SameSite=Lax{secure}"
