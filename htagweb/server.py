"""``WebServer`` and ``WebServerWS``: Starlette apps that serve htag apps, one
OS process per user."""

from __future__ import annotations

import base64
import logging
import os
import resource
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from htag.logo import LOGO_PNG_B64
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from . import logs
from .appspec import AppSpec
from .client import ForkServerClient
from .config import Config
from .connections import PROTOCOL_PATH, ConnectionLimits
from .front import HtagEndpoint
from .observe import Observability
from .pages import bootstrap_page
from .runtime import Runtime, default_runtime_dir
from .sessions import SessionMiddleware, make_signer, samesite_attribute
from .stores import make_store

if TYPE_CHECKING:
    from .cipher import IdentityKey

logger = logging.getLogger("htagweb")

IDENTITY_ENV = "HTAGWEB_IDENTITY_KEY"

_LOGO = base64.b64decode(LOGO_PNG_B64)


class WebServer(Starlette):
    """Serves an htag app over plain HTTP only (htag's pure-HTTP mode).

    ``app`` is a ``Tag.App`` subclass, a component class, a ``"module:Class"``
    string or a module with an ``App``. The object is a Starlette app: add your
    own routes, serve other htag apps with :meth:`add_app`, run it with
    :meth:`run` or any ASGI server.
    """

    http_only = True

    def __init__(
        self, app: Any, *, routes: Sequence[BaseRoute] | None = None, middleware: Sequence[Middleware] | None = None, **settings: Any
    ) -> None:
        """``settings``: any field of :class:`htagweb.config.Config` (``timeout_inactivity=60``,
        ``session_store="redis://..."``, ``parano=True``...), documented there."""
        logs.quiet_htag()  # before any user process is forked: they inherit it
        logs.quiet_client_faults()
        server_id = self._identity(app)
        self.config = config = Config.of({**settings, "http_only": self.http_only, "server_id": server_id})
        samesite_attribute(config.cookie_samesite)  # a wrong value fails here, not at the first request
        self.runtime = Runtime(config.runtime_dir or default_runtime_dir(server_id), config.secret)
        self.store = make_store(config.session_store, self.runtime.sqlite_path, config.session_max_age)
        self.apps: dict[str, AppSpec] = {}
        self.client = ForkServerClient(self.runtime, self.config, self.apps)
        # behind a proxy every connection has the proxy's address: the proxy limits per client
        per_address = 0 if config.trust_proxy_headers else config.max_connections_per_address
        self.connection_limits = ConnectionLimits(
            per_address, config.timeout_request_head, config.max_request_head_size, config.timeout_request_body, config.max_message_size
        )
        #: told the operator that the server's protocol does not apply connection_limits
        self.said_unlimited = False
        signer = make_signer(self.runtime.secrets)
        layers = [
            Middleware(
                SessionMiddleware,
                store=self.store,
                signer=signer,
                https_only=config.https_only,
                trust_proxy_headers=config.trust_proxy_headers,
                samesite=config.cookie_samesite,
                on_rotate=self.client.rotate,
                parano=config.parano,
            )
        ]
        self.identity: IdentityKey | None = None
        if config.parano:  # imported only here: every user process is forked from this memory, the smaller the faster
            from .cipher import IdentityKey, TicketSealer
            from .parano import Credentials, ParanoMiddleware

            identity_path = config.parano_identity or os.environ.get(IDENTITY_ENV) or self.runtime.identity_path
            self.identity = IdentityKey.load_or_create(Path(identity_path))
            paranoid = Middleware(
                ParanoMiddleware,
                identity=self.identity,
                sealer=TicketSealer(self.runtime.secrets),
                credentials=Credentials(self.runtime.secrets, self.store.max_age),
                store=self.store,
                ticket_lifetime=config.parano_ticket_lifetime,
                max_message=config.max_message_size,
                debug=config.debug,
                on_rejection=partial(self.client.count, "parano_rejections"),
            )
            layers.insert(0, paranoid)
        super().__init__(
            debug=config.debug,
            routes=list(routes or []),
            middleware=[*layers, *(middleware or [])],
            lifespan=self._lifespan,
            max_body_size=config.max_body_size,
        )
        self.add_route("/logo.png", _logo)
        self.add_route("/favicon.ico", _logo)
        observability = Observability(self.client)
        self.add_route("/_htagweb/health", observability.health)
        if config.metrics:
            self.add_route("/_htagweb/metrics", observability.metrics)
        self._install(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.connection_limits.in_force and not self.said_unlimited and scope["type"] != "lifespan":
            self.said_unlimited = True
            logger.warning(
                "this server's connections are not limited (timeout_request_head and _body, max_request_head_size, "
                "max_connections_per_address, max_body_size of a WebSocket message): "
                "serve it with app.run(), uvicorn --http %s, or gunicorn -k htagweb.workers.UvicornWorker",
                PROTOCOL_PATH,
            )
        await super().__call__(scope, receive, send)

    def _identity(self, app: Any) -> str:
        """What names this server, for its default runtime directory and its fork-server."""
        return AppSpec.of(app).identity

    def _install(self, app: Any) -> None:
        self.add_app("/", app)

    def _endpoint(self, app: str, kind: str, source: dict[str, str] | None = None) -> HtagEndpoint:
        bootstrap = bootstrap_page(self.identity) if self.identity else None
        return HtagEndpoint(app, kind, self.runtime, self.client, self.store, self.config, bootstrap, source)

    def add_app(self, path: str, app: Any) -> None:
        """Serve another htag app at ``path`` (its own process per user)."""
        spec = AppSpec.of(app)
        self.apps[spec.name] = spec
        base = path.rstrip("/")

        routes: list[BaseRoute] = [
            Route(path, self._endpoint(spec.name, "page"), methods=["GET", "HEAD"]),
            Route(f"{base}/event", self._endpoint(spec.name, "event"), methods=["POST"]),
        ]
        if not self.http_only:
            routes += [
                Route(f"{base}/stream", self._endpoint(spec.name, "stream"), methods=["GET"]),
                WebSocketRoute(f"{base}/ws", self._endpoint(spec.name, "ws")),
            ]
        self.router.routes.extend(routes)

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        _share_uvicorn_logging()
        if self.identity:
            logger.info("parano mode: server identity fingerprint %s", self.identity.fingerprint)
        await self.client.start()
        _open_files_up_to_the_hard_limit()
        try:
            yield
        finally:
            await self.client.stop()
            await self.store.close()

    def run(self, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
        """Serve with uvicorn (``uvicorn_options`` are passed on)."""
        import uvicorn

        logs.configure()
        uvicorn_options.setdefault("proxy_headers", self.config.trust_proxy_headers)
        uvicorn_options.setdefault("http", PROTOCOL_PATH)
        # an SSE stream never ends by itself: without a limit, a stop waits for every browser to leave
        uvicorn_options.setdefault("timeout_graceful_shutdown", max(1, int(self.config.shutdown_grace)))
        if self.config.parano:  # ciphertext does not compress: deflating it only costs time
            uvicorn_options.setdefault("ws_per_message_deflate", False)
        uvicorn.run(self, host=host, port=port, **uvicorn_options)


class WebServerWS(WebServer):
    """Serves an htag app: first render over HTTP, then WebSocket, falling back
    to SSE and then plain HTTP exactly as htag's client does."""

    http_only = False


def _open_files_up_to_the_hard_limit() -> None:
    """A worker holds a descriptor per client connection: the soft limit (often 1,024) would
    let a few addresses at ``max_connections_per_address`` take them all. (User processes
    have a limit of their own, ``max_open_files``.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _share_uvicorn_logging() -> None:
    """Under a bare ``uvicorn server:app`` (or gunicorn) only the server's own loggers
    have handlers: print htagweb's lines through them, unless the user configured logging."""
    if logging.getLogger().handlers or any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        return
    for handler in logging.getLogger("uvicorn").handlers or logging.getLogger("gunicorn.error").handlers:
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


async def _logo(request: Request) -> Response:
    return Response(_LOGO, media_type="image/png", headers={"Cache-Control": "max-age=86400"})
