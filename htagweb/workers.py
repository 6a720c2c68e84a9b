"""gunicorn's worker for htagweb: ``gunicorn -k htagweb.workers.UvicornWorker server:app``.

uvicorn's worker with htagweb's HTTP protocol, which limits the connections of each
client address and the time a request's head may take (htagweb/connections.py)."""

from __future__ import annotations

from typing import Any

from uvicorn.workers import UvicornWorker as _UvicornWorker

from .connections import PROTOCOL_PATH


class UvicornWorker(_UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {**_UvicornWorker.CONFIG_KWARGS, "http": PROTOCOL_PATH}
