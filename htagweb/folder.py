"""A folder of htag apps, as the development server sees it.

URLs map to files below the root and never outside: every path segment must be
a plain name (no dot files, no ``_private`` files, no ``..``; Starlette has
already decoded ``%2e``), and the resolved real path, symlinks followed, must
stay inside the root. Files are inspected with ``ast``, never imported, by the
front; a file app is imported in its own user process, afresh each time its
source (or a module of the folder it imports) changed.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
ENDPOINTS = ("ws", "stream", "event")


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "folder", "app", "no-app" or "error"
    detail: str  # the app's class, or why there is none
    url: str


@dataclass(frozen=True)
class Target:
    kind: str  # "index" or "file"
    rel: str  # the folder, or the file without ".py", relative to the root ("" for the root)
    endpoint: str  # "page", "ws", "stream" or "event"
    class_name: str = ""

    @property
    def source(self) -> dict[str, str]:
        return {"kind": self.kind, "rel": self.rel, "class": self.class_name}


def _inside(root: Path, path: Path) -> bool:
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real == root or root in real.parents


#: what a file calls at its top level when it builds a server of its own
SERVERS = {"WebServer", "WebServerWS", "HtagServer", "Starlette"}


def own_server(tree: ast.Module) -> bool:
    """Whether a module builds its own server when imported (``app = WebServerWS(Home)``
    with routes beside it, as examples/multi.py): its routes and settings exist only
    when it runs itself, not here."""
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)) else None
        if isinstance(value, ast.Call):
            func = value.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in SERVERS:
                return True
    return False


def app_class(path: Path) -> str | None:
    """The class to serve in a Python file: ``App``, else the first ``Tag.App`` subclass;
    None for a file without one, or that builds its own server (see :func:`own_server`).
    Raises SyntaxError for a file that does not parse."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if own_server(tree):
        return None
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for node in classes:
        if node.name == "App":
            return node.name
    for node in classes:
        for base in node.bases:
            if isinstance(base, ast.Attribute) and base.attr == "App":
                return node.name
    return None


def resolve(root: Path, url_path: str) -> Target | None:
    """What a URL path names in the folder, or None (a 404) for anything else."""
    parts = [p for p in url_path.split("/") if p]
    candidates = [(parts, "page")]
    if parts and parts[-1] in ENDPOINTS:
        candidates.insert(0, (parts[:-1], parts[-1]))
    for segments, endpoint in candidates:
        if not all(SEGMENT.match(s) for s in segments):
            continue
        path = root.joinpath(*segments)
        if path.is_dir() and _inside(root, path):
            return Target("index", "/".join(segments), endpoint)
        file = path.with_name(path.name + ".py") if segments else None
        if file and file.is_file() and _inside(root, file):
            try:
                class_name = app_class(file)
            except (SyntaxError, ValueError, UnicodeDecodeError):
                class_name = "App"  # served anyway: its import shows the error page
            if class_name:
                return Target("file", "/".join(segments), endpoint, class_name)
    return None


def not_found(root: Path, url_path: str) -> str:
    """Why a URL path names nothing to serve, for its 404 page."""
    segments = [p for p in url_path.split("/") if p]
    if segments and all(SEGMENT.match(s) for s in segments):
        file = root.joinpath(*segments).with_suffix(".py")
        try:
            if file.is_file() and _inside(root, file) and own_server(ast.parse(file.read_text(encoding="utf-8"))):
                return f"{file.name} builds its own server (its routes, its settings): run python {file.name}, not here."
        except (SyntaxError, ValueError, UnicodeDecodeError):
            pass
    return f"No htag app or folder at {url_path}."


def scan(root: Path, rel: str) -> list[Entry]:
    """The folder's sub-folders and Python files, as the index lists them."""
    folder = root.joinpath(*[p for p in rel.split("/") if p])
    entries = []
    for path in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
        stem = path.name[:-3] if path.name.endswith(".py") else path.name
        if not SEGMENT.match(stem) or not _inside(root, path):
            continue
        url = "/" + "/".join(p for p in (rel, stem) if p)
        if path.is_dir():
            entries.append(Entry(stem, "folder", "", url + "/"))
        elif path.suffix == ".py":
            try:
                class_name = app_class(path)
                if class_name:
                    entries.append(Entry(stem, "app", class_name, url))
                elif own_server(ast.parse(path.read_text(encoding="utf-8"))):
                    entries.append(Entry(stem, "no-app", f"builds its own server (its routes, its settings): run python {path.name}", url))
                else:
                    entries.append(Entry(stem, "no-app", "no htag app in this file", url))
            except (SyntaxError, ValueError, UnicodeDecodeError) as exc:
                entries.append(Entry(stem, "error", f"does not parse: {exc}", url))
    return entries


def load_file_app(root: Path, rel: str, class_name: str, deps_file: Path) -> type:
    """Import a file app in this (user) process; write the files it depends on,
    with their mtimes, so the fork-server can tell when to start it afresh."""
    from .appspec import AppLoadError, as_app

    path = root.joinpath(*rel.split("/")).with_suffix(".py")
    for folder in (str(path.parent), str(root)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    before = set(sys.modules)
    deps_file.write_text(json.dumps({str(path): path.stat().st_mtime_ns}))  # kept even if the import fails
    module = importlib.import_module(".".join(rel.split("/")))
    deps = {str(path): path.stat().st_mtime_ns}
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None)
        if file and Path(file).resolve().is_relative_to(root):
            deps[file] = os.stat(file).st_mtime_ns
    deps_file.write_text(json.dumps(deps))
    target = getattr(module, class_name, None)
    if not isinstance(target, type):
        raise AppLoadError(f"{rel}.py has no class {class_name}")
    return as_app(target)


def changed(deps_file: Path) -> bool:
    """Whether a file a user process imported changed since it did."""
    try:
        deps: dict[str, Any] = json.loads(deps_file.read_text())
    except (OSError, ValueError):
        return False
    for file, mtime in deps.items():
        try:
            if os.stat(file).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False
