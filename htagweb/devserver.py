"""``HtagServer``: every htag app of a folder, browsable from an index page.

What ``python -m htagweb DIR`` runs. Each file app gets its own process per user
and is imported afresh in it when its source changed (press F5); each folder has
an index page, itself an htag app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from .folder import not_found, resolve
from .front import HtagEndpoint
from .pages import error_page
from .server import WebServer

METHODS = {"page": ("GET", "HEAD"), "event": ("POST",), "stream": ("GET",), "ws": ()}


class HtagServer(WebServer):
    """Serves the htag apps of ``root`` (debug on by default: it is for development)."""

    def __init__(self, root: str | Path = ".", *, http_only: bool = False, debug: bool = True, **options: Any) -> None:
        self.http_only = http_only
        options.setdefault("spare_processes", 1)  # file apps are imported afresh in each process: spares serve index pages only
        super().__init__(Path(root), debug=debug, **options)

    def _identity(self, app: Any) -> str:
        return f"folder:{Path(app).resolve()}"

    def _install(self, app: Any) -> None:
        self.root = Path(app).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a folder: {self.root}")
        router = FolderRouter(self)
        self.router.routes.extend([Route("/{path:path}", router, methods=["GET", "HEAD", "POST"]), WebSocketRoute("/{path:path}", router)])


class FolderRouter:
    """Maps a URL to an app (or folder index) of the root, and 404s everything else."""

    def __init__(self, server: HtagServer) -> None:
        self.server = server
        self.endpoints: dict[tuple[str, str], HtagEndpoint] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = resolve(self.server.root, scope["path"])
        is_ws = scope["type"] == "websocket"
        if (
            target is None
            or is_ws != (target.endpoint == "ws")
            or (not is_ws and scope["method"] not in METHODS[target.endpoint])
            or (self.server.http_only and target.endpoint in ("ws", "stream"))
        ):
            if is_ws:
                await send({"type": "websocket.close", "code": 4404, "reason": "not found"})
            else:
                await error_page(404, not_found(self.server.root, scope["path"]))(scope, receive, send)
            return
        name = f"folder:{target.kind}:{target.rel}"
        endpoint = self.endpoints.get((name, target.endpoint))
        if endpoint is None:
            source = {**target.source, "root": str(self.server.root)}
            endpoint = self.endpoints[(name, target.endpoint)] = self.server._endpoint(name, target.endpoint, source)
        await endpoint(scope, receive, send)
