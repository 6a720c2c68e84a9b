"""htagweb: the production runner for htag apps."""

import logging

from .appspec import AppLoadError
from .devserver import HtagServer
from .server import WebServer, WebServerWS
from .sessions import Session
from .stores import MemoryStore, RedisStore, SessionStore, SQLiteStore, StoreUnavailable

__all__ = [
    "WebServer",
    "WebServerWS",
    "HtagServer",
    "Session",
    "SessionStore",
    "SQLiteStore",
    "MemoryStore",
    "RedisStore",
    "StoreUnavailable",
    "AppLoadError",
]
__version__ = "2.0.0.dev0"

logging.getLogger("htagweb").addHandler(logging.NullHandler())
