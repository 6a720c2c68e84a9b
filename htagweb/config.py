"""The settings of a server, in one table: ``WebServer(App, **settings)`` takes
any of these fields by name (and nothing else), the command line takes its
defaults from here, and the fork-server and user processes read the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stores import SessionStore


@dataclass(frozen=True)
class Config:
    #: show tracebacks to the browser (error pages, htag's error overlay)
    debug: bool = False
    #: force htag's pure-HTTP mode (no WebSocket, no SSE); set by the server class (WebServer: on, WebServerWS: off)
    http_only: bool = False
    #: seconds without any exchange before a user process is destroyed (0: never)
    timeout_inactivity: float = 600.0
    #: seconds an event handler (or the app's construction, or the first import of an app named by a string)
    #: may run before its process is killed (0: never)
    timeout_interaction: float = 60.0
    #: live user processes at most; beyond, new users get a 503 with Retry-After
    max_processes: int = 500
    #: live user processes of one client address at most (the address as new_processes_per_minute reads it):
    #: beyond, its own least recently active idle one makes room, so that one address cannot end
    #: other users' processes (None: a quarter of max_processes, at least 1; 0: no limit)
    max_processes_per_address: int | None = None
    #: user processes forked ahead of need (asleep, about 1.1 MB each; four woken to rehearse, 4.4 MB):
    #: a crowd of new users that large costs no fork (None: min(50, max_processes // 10))
    spare_processes: int | None = None
    #: seconds user processes get to run on_destroy at server stop before being killed
    shutdown_grace: float = 5.0
    #: bytes of resident memory a user process may use before it is killed (0: no limit)
    memory_limit: int = 1024 * 1024 * 1024
    #: open files (sockets included) a user process may hold before it is killed (0: no limit)
    max_open_files: int = 1024
    #: bytes a request body or a WebSocket message may have: 413 beyond, a WebSocket closed 1009
    #: (parano's envelope adds 1 KiB: :attr:`max_message_size`). A WebSocket's is served as
    #: timeout_request_head is (without it, uvicorn's ws_max_size: 16 MiB)
    max_body_size: int = 1024 * 1024
    #: where sessions live: "sqlite" (the runtime directory's, default), "sqlite:///PATH", "memory",
    #: "redis://..." or a SessionStore
    session_store: SessionStore | str | None = None
    #: signs session cookies and seals parano tickets; comma-separated to rotate (default: $HTAGWEB_SECRET,
    #: else a key file in the runtime directory)
    secret: str | bytes | None = field(default=None, repr=False)
    #: the private directory shared by the workers (default: $HTAGWEB_RUNTIME_DIR, else one derived from
    #: the working directory and the app)
    runtime_dir: str | None = None
    #: session cookies marked Secure even when the request came over plain HTTP (TLS ends before us)
    https_only: bool = False
    #: honour X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-For (set only behind a proxy that sets them)
    trust_proxy_headers: bool = False
    #: every exchange encrypted (crypto/PROTOCOL.md); plaintext htag exchanges refused
    parano: bool = False
    #: the server identity key's PEM file (default: $HTAGWEB_IDENTITY_KEY, else one in the runtime directory)
    parano_identity: str | None = None
    #: seconds a parano ticket (the keys of one browser's key exchange) stays valid
    parano_ticket_lifetime: float = 24 * 3600
    #: serve /_htagweb/metrics (Prometheus text)
    metrics: bool = False
    #: seconds the fork-server waits for a worker to come back after the last one vanished without saying bye
    orphan_grace: float = 10.0
    #: what this server serves (its first app, a script by its file, or a folder): a fork-server
    #: refuses workers of another server, so a shared runtime directory never serves the wrong app
    server_id: str = ""
    #: origins (scheme://host[:port]) besides the server's own whose pages may open its WebSocket
    #: and SSE streams and reset its apps: for apps deliberately embedded in another site
    allowed_origins: tuple[str, ...] = ()
    #: seconds a session lives without activity: the cookie's signature expires then and the
    #: store forgets the data (renewed on activity, every 1/14 of it: a day for the default 14 days)
    session_max_age: float = 14 * 24 * 3600
    #: the cookie's SameSite: "lax"; "strict"; "none" for an app embedded in another site's frame
    #: (the cookie is then sent with every request from any site: see the README before using it)
    cookie_samesite: str = "lax"
    #: new user processes one client address may cause per minute (an IPv6 client counts by its /64;
    #: the address is the socket's, or X-Forwarded-For's last with trust_proxy_headers); 0: no limit
    new_processes_per_minute: int = 60
    #: seconds a client has to send a request's head (its line and headers) once it connected or began
    #: it: 408 beyond, and a connection that sent nothing is closed (0: no limit). Under app.run(),
    #: ``python -m htagweb``, ``uvicorn --http htagweb.connections:HTTPProtocol`` or gunicorn's
    #: ``-k htagweb.workers.UvicornWorker`` (htagweb/connections.py)
    timeout_request_head: float = 10.0
    #: bytes a request's head (its line and headers, cookies included) may have: 431 beyond (0: no limit).
    #: Served as timeout_request_head is (under uvicorn's h11 protocol, its own limit of 16 KiB comes first: 400)
    max_request_head_size: int = 64 * 1024
    #: seconds a request's body may pause between two reads (while the app waits for it): the connection
    #: is closed beyond, the app reading a disconnect (0: no limit). Served as timeout_request_head is
    timeout_request_body: float = 30.0
    #: open connections (WebSockets included) one client address may hold (an IPv6 client counts by its
    #: /64): 429 beyond; not applied with trust_proxy_headers (every connection is the proxy's: limit
    #: there); 0: no limit. Served as timeout_request_head is
    max_connections_per_address: int = 256
    #: let Linux keep once the memory pages user processes hold alike (KSM, where root runs it): an idle
    #: user about 1 MB instead of 5; costs ksmd's scanning, and opens a timing side channel between
    #: processes (crypto/THREAT_MODEL.md): off unless asked
    merge_memory: bool = False

    def __post_init__(self) -> None:
        if self.spare_processes is None:  # a small server keeps a tenth of its cap
            object.__setattr__(self, "spare_processes", min(50, self.max_processes // 10))
        if self.max_processes_per_address is None:  # three quarters always left to the other addresses
            object.__setattr__(self, "max_processes_per_address", max(1, self.max_processes // 4))
        object.__setattr__(self, "allowed_origins", tuple(self.allowed_origins))

    @property
    def spares(self) -> int:
        """``spare_processes``, resolved."""
        assert self.spare_processes is not None
        return self.spare_processes

    @property
    def max_message_size(self) -> int:
        """Bytes a body or a WebSocket message may have on the wire: ``max_body_size``, and under
        parano room for the envelope around it (a message too small to hold one is never sent)."""
        return max(self.max_body_size, 4096) + 1024 if self.parano else self.max_body_size

    @property
    def processes_per_address(self) -> int:
        """``max_processes_per_address``, resolved."""
        assert self.max_processes_per_address is not None
        return self.max_processes_per_address

    @classmethod
    def of(cls, settings: dict[str, Any]) -> Config:
        """A Config from keyword settings, with a clear error for a name that is not one."""
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}: a WebServer takes the fields of htagweb.config.Config")
        return cls(**settings)
