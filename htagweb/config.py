"""Settings shared by the front, the fork-server and the user processes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    #: show tracebacks to the browser (error pages, htag's error overlay)
    debug: bool = False
    #: force htag's pure-HTTP mode (no WebSocket, no SSE)
    http_only: bool = False
    #: seconds without any exchange before a user process is destroyed (0: never)
    timeout_inactivity: float = 600.0
    #: seconds an event handler (or the app's construction) may run before its process is killed (0: never)
    timeout_interaction: float = 60.0
    #: live user processes at most; beyond, new users get a 503 with Retry-After
    max_processes: int = 500
    #: user processes forked ahead of need (one rehearsed, the others asleep, about 1.6 MB each):
    #: a crowd of new users that large costs no fork (WebServer's default: min(50, max_processes // 10))
    spare_processes: int = 50
    #: seconds user processes get to run on_destroy at server stop before being killed
    shutdown_grace: float = 5.0
    #: bytes of resident memory a user process may use before it is killed (0: no limit)
    memory_limit: int = 1024 * 1024 * 1024
    #: open files (sockets included) a user process may hold before it is killed (0: no limit)
    max_open_files: int = 1024
    #: every exchange encrypted (crypto/PROTOCOL.md); plaintext htag exchanges refused
    parano: bool = False
    #: seconds the fork-server waits for a worker to come back after the last one vanished without saying bye
    orphan_grace: float = 10.0
    #: what this server serves (its first app, a script by its file, or a folder): a fork-server
    #: refuses workers of another server, so a shared runtime directory never serves the wrong app
    server_id: str = ""
    #: origins (scheme://host[:port]) besides the server's own whose pages may open its WebSocket
    #: and SSE streams and reset its apps: for apps deliberately embedded in another site
    allowed_origins: tuple[str, ...] = ()
    #: honour X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-For (set only behind a proxy that sets them)
    trust_proxy_headers: bool = False
    #: seconds a session lives without activity: the cookie's signature expires then and the
    #: store forgets the data (renewed on activity, every 1/14 of it: a day for the default 14 days)
    session_max_age: float = 14 * 24 * 3600
    #: the cookie's SameSite: "lax"; "strict"; "none" for an app embedded in another site's frame
    #: (the cookie is then sent with every request from any site: see the README before using it)
    cookie_samesite: str = "lax"
    #: new user processes one client address may cause per minute (an IPv6 client counts by its /64;
    #: the address is the socket's, or X-Forwarded-For's last with trust_proxy_headers); 0: no limit
    new_processes_per_minute: int = 60
