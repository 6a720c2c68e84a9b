"""Which code a worker runs: a code generation, so that a reload (gunicorn's HUP,
new workers importing the edited app) gets a fork-server of its own.

A fork-server serves the app classes it was forked with; a worker whose code
differs starts a fork-server for its generation, and the older one is retired:
it keeps its user processes, on the old code, until they leave, and forks no
more. The generation is a digest of the source files the worker depends on (the
modules imported from outside the Python installation, the files of the apps
named by a ``"module:Class"`` string, and htagweb's own, wherever installed: an
upgrade of htagweb is a deploy too, and a worker and its fork-server must speak
the same protocol): their paths, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from .appspec import AppSpec


def code_generation(apps: Iterable[AppSpec]) -> str:
    installed = tuple({os.path.realpath(prefix) + os.sep for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    files = {
        os.path.realpath(path)
        for module in list(sys.modules.values())
        if isinstance(path := getattr(module, "__file__", None), str)
    }
    files = {path for path in files if not path.startswith(installed)}
    files |= {os.path.realpath(path) for path in Path(__file__).parent.rglob("*.py")}
    for spec in apps:
        if spec.target is None:
            origin = _origin(spec.name.partition(":")[0])
            if origin:
                files.add(os.path.realpath(origin))
    digest = hashlib.sha256()
    for path in sorted(files):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _origin(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None
