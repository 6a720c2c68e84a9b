"""Hosts one htag App instance: the calls htag's own ``WebApp`` makes, on our wire.

htag 2.0.28's ``WebApp`` cannot be built on Starlette 1.x (it calls the removed
``Starlette.add_websocket_route``). Its per-session logic is small and lives on
the App runner itself, so this adapter makes the same calls: build the instance
under ``current_request``, mount it, render the page, hand WebSockets, SSE
streams and event POSTs to the runner's own handlers. Every htag name used here
is checked by ``tests/test_htag_contract.py``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import os
import traceback
from collections.abc import Coroutine
from typing import Any

from htag import current_request
from htag.client_js import CLIENT_JS
from htag.runner import AppRunner
from htag.utils import _obf_loads
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from . import logs
from .config import Config
from .ordering import ORDER_HEADER, PageOrder
from .pages import compact, error_page, htag_error, script
from .sessions import Session
from .slot import Watchdog

logger = logging.getLogger("htagweb")

#: the ids of events run that are kept: htag's client posts again those a cut WebSocket left unanswered
RECENT_EVENTS = 256
#: the longest id kept (htag's client: some 11 characters)
MAX_CALLBACK_ID = 64
#: what JSON's decoder raises for text that is not JSON, or nested deeper than the stack allows
NOT_JSON = (ValueError, RecursionError)
SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
CLIENT_SCRIPT = f"<script>{CLIENT_JS}</script>"
#: what we add to htag's client (htagweb/js/: each file says why)
ADDITIONS = ("wrapped_overlay.js", "keep_live_body.js", "resend_cut_events.js")
CLIENT = CLIENT_SCRIPT + "".join(f"<script>{compact(script(name))}</script>" for name in ADDITIONS)
# htag's client in pure-HTTP mode from the start: it starts no WebSocket (HTAG_EXT_INIT) and
# posts every event for an answer in the response (htag's own cookie switch instead mocks
# WebSocket and EventSource, which fail in turn, with errors in the console, at every load)
PURE_HTTP_CLIENT = f"<script>window.HTAG_EXT_INIT=true</script>{CLIENT}<script>window.use_pure_http=window.use_fallback=true</script>"


class HtagHost:
    def __init__(
        self, app_cls: type[AppRunner] | None, session: Session, config: Config, watchdog: Watchdog, load_error: str | None = None
    ) -> None:
        self.app_cls = app_cls
        self.session = session
        self.config = config
        self.watchdog = watchdog
        self.load_error = load_error
        self.instance: AppRunner | None = None
        if app_cls is not None and not hasattr(app_cls, "session"):
            # ``self.session`` in the app, from init() on: this process serves one session only
            app_cls.session = session
        #: the app could not be built: this process must end so the next load starts afresh
        self.broken = False
        #: events posted without waiting for their answer (it comes on the SSE stream), still running
        self.background: set[asyncio.Task[None]] = set()
        #: the ids of the last events run, by any way: one posted again is answered, not run twice
        self.ran: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: parano pages number their events: delivered here in that order (crypto/PROTOCOL.md §7)
        self.order = PageOrder()
        logs.drop_htag_error_prints()  # this process hosts htag: its errors are logged, not also printed

    @property
    def app_name(self) -> str:
        return self.app_cls.__name__ if self.app_cls is not None else "(not loaded)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["session"] = self.session
        endpoint = scope["htagweb"]["endpoint"]
        if self.app_cls is None:  # its import failed: say so, then end
            self.broken = True
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1011, "reason": "the application could not be loaded"})
            else:
                trace = self.load_error if self.config.debug else None
                await error_page(500, "The application could not be loaded.", trace)(scope, receive, send)
            return
        order = scope["htagweb"].get("order")
        if endpoint == "ws":
            await self.websocket(WebSocket(scope, self._checked(receive, send, order), send))
            return
        request = Request(scope, receive)
        if order and endpoint == "page":
            self.order.register(order["page"])
        elif order and order.get("seq") is not None:
            ran = _sent_callback_id(await request.body()) in self.ran  # the body is kept for the handler
            refusal = await self.order.admit(order["page"], order["seq"], ran)
            if refusal is not None:
                logger.warning("refused an htag event: %s", refusal)
                payload = {"status": "error", "payloads": [htag_error(refusal)]}
                await JSONResponse(payload, status_code=409, headers={ORDER_HEADER: "order"})(scope, receive, send)
                return
        handler = {"page": self.page, "stream": self.stream, "event": self.event}[endpoint]
        response = await handler(request)
        await response(scope, receive, send)

    def _instance(self, connection: Request | WebSocket) -> AppRunner:
        if self.instance is None:
            assert self.app_cls is not None  # __call__ answered already when the app could not be loaded
            token = current_request.set(connection)
            try:
                with self.watchdog.interaction():
                    instance = self.app_cls()
                instance.debug = self.config.debug
                instance.parano_key = None
                instance.htag_csrf = os.urandom(16).hex()
                self._track_events(instance)
                instance._trigger_mount()
            finally:
                current_request.reset(token)
            self.instance = instance
        self.instance.htag_request = connection
        return self.instance

    def _track_events(self, instance: AppRunner) -> None:
        """Every event handler runs as one interaction watched by the fork-server; the ids
        of the last events run are kept (see :meth:`event`)."""
        handle_event = instance.handle_event
        watchdog = self.watchdog
        ran = self.ran

        async def watched_handle_event(msg: dict[str, Any], ws: WebSocket | None) -> None:
            if (callback_id := _callback_id(msg)) is not None:
                ran[callback_id] = None
                if len(ran) > RECENT_EVENTS:
                    ran.popitem(last=False)
            with watchdog.interaction():
                await handle_event(msg, ws)

        instance.handle_event = watched_handle_event

    async def page(self, request: Request) -> Response:
        if "n" in request.query_params and self.instance is not None:  # htag's forced reset
            self.instance._trigger_destroy()
            self.instance = None
        had_instance = self.instance is not None
        try:
            instance = self._instance(request)
        except Exception:
            logger.exception("htag app %s failed to start", self.app_name)
            self.broken = True
            return error_page(500, "The application failed to start.", traceback.format_exc() if self.config.debug else None)
        if had_instance:  # F5: htag re-runs the mount lifecycle
            instance._trigger_unmount()
            instance._trigger_mount()
        token = current_request.set(request)
        try:
            with self.watchdog.interaction():
                page = instance._render_page()
        finally:
            current_request.reset(token)
        return HTMLResponse(page.replace(CLIENT_SCRIPT, PURE_HTTP_CLIENT if self.config.http_only else CLIENT, 1))

    async def stream(self, request: Request) -> Response:
        instance = self._instance(request)
        return StreamingResponse(instance._handle_sse(request), media_type="text/event-stream", headers=SSE_HEADERS)

    async def event(self, request: Request) -> Response:
        instance = self._instance(request)
        if request.headers.get("x-htag-token") != instance.htag_csrf:
            return PlainTextResponse("CSRF token mismatch: reload the page", status_code=403)
        try:
            msg = _obf_loads((await request.body()).decode(), None)
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
        except NOT_JSON as exc:
            return PlainTextResponse(f"invalid htag event: {exc}", status_code=400)
        callback_id = _callback_id(msg)
        if callback_id in self.ran:
            # sent again once its WebSocket was cut (htagweb/js/resend_cut_events.js), it had run: answered only
            logger.info("an htag event of %s sent again once its WebSocket was cut: answered, not run twice", self.app_name)
            run = instance.broadcast_updates(callback_id=callback_id)
        else:
            run = instance.handle_event(msg, None)
        token = current_request.set(request)
        try:
            # HTTP-only: answer in the response even before htag's client has noticed it has no SSE
            if msg.get("fallback") or self.config.http_only:
                await run
                payloads, instance._fallback_queue = getattr(instance, "_fallback_queue", []), []
                return JSONResponse({"status": "ok", "payloads": payloads})
            self._in_background(run)
            return JSONResponse({"status": "ok"})
        finally:
            current_request.reset(token)

    def _in_background(self, event: Coroutine[Any, Any, None]) -> None:
        """Run an event past its POST's answer: kept, its failure logged, awaited at destroy."""
        task = asyncio.create_task(event)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("htag event of %s failed", self.app_name, exc_info=task.exception())

    async def websocket(self, websocket: WebSocket) -> None:
        instance = self._instance(websocket)
        token = current_request.set(websocket)
        try:
            await instance._handle_websocket(websocket)
        finally:
            current_request.reset(token)

    def _checked(self, receive: Receive, send: Send, order: dict[str, Any] | None) -> Receive:
        """Closes the socket (1003) on a frame htag could not read, and (4409) on an
        event out of its page's order, before htag sees it."""

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive" and order and message.get("htagweb.seq") is not None:
                refusal = await self.order.admit(order["page"], message["htagweb.seq"])
                if refusal is not None:
                    logger.warning("closing a WebSocket: %s", refusal)
                    await send({"type": "websocket.close", "code": 4409, "reason": refusal})
                    return {"type": "websocket.disconnect", "code": 4409}
            if message["type"] == "websocket.receive":
                text = message.get("text")
                try:
                    valid = text is not None and isinstance(json.loads(text), dict)
                except NOT_JSON:
                    valid = False
                if not valid:
                    logger.warning("closing a WebSocket that sent an invalid htag frame")
                    await send({"type": "websocket.close", "code": 1003, "reason": "invalid htag frame"})
                    return {"type": "websocket.disconnect", "code": 1003}
            return message

        return checked_receive

    async def destroy(self, grace: float) -> None:
        """Run the app's on_destroy (awaited when it is async), as htag does on discard,
        once the events still running in the background are over (cancelled)."""
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.instance is None:
            return
        try:
            result = self.instance.on_destroy()
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, grace)
        except Exception:
            logger.exception("on_destroy of %s failed", self.app_name)


def _sent_callback_id(body: bytes) -> str | None:
    """The callback id of an event's body, if it reads as one (the handler says why not)."""
    try:
        msg = json.loads(body)
    except NOT_JSON:
        return None
    return _callback_id(msg) if isinstance(msg, dict) else None


def _callback_id(msg: dict[str, Any]) -> str | None:
    """The id htag's client gives each event (random, some 11 characters), by which it matches
    the answer; None for a longer one, not kept (a client's own ids would hold its memory)."""
    data = msg.get("data")
    callback_id = data.get("callback_id") if isinstance(data, dict) else None
    return callback_id if isinstance(callback_id, str) and len(callback_id) <= MAX_CALLBACK_ID else None
