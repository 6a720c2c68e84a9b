"""The index page of the development server: itself an htag app, one per folder."""

from __future__ import annotations

import os
from pathlib import Path

from htag import State, Tag
from htag.runner import AppRunner

from .folder import Entry, scan

STYLE = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 0; background: #f4f5f7; color: #1f2933; }
header { background: #243b53; color: #fff; padding: 1.2em 2em; }
header h1 { margin: 0; font-size: 1.3em; font-weight: 600; }
header p { margin: .3em 0 0; opacity: .8; font-size: .9em; }
nav { padding: .8em 2em; font-size: .95em; }
nav a { color: #243b53; }
ul.entries { list-style: none; margin: 0 2em 2em; padding: 0; display: grid;
             grid-template-columns: repeat(auto-fill, minmax(16em, 1fr)); gap: .8em; }
ul.entries li { background: #fff; border-radius: 8px; padding: .9em 1.1em; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
ul.entries li a { color: #0b69a3; font-weight: 600; text-decoration: none; font-size: 1.05em; }
ul.entries li a:hover { text-decoration: underline; }
ul.entries li small { display: block; color: #627d98; margin-top: .3em; }
ul.entries li.no-app { opacity: .65; }
ul.entries li.error { border-left: 4px solid #d64545; }
ul.entries li.error small { color: #a61b1b; }
.badge { display: inline-block; min-width: 2.6em; text-align: center; margin-right: .6em; padding: .1em .4em;
         border-radius: 4px; font-size: .7em; font-weight: 700; letter-spacing: .05em; vertical-align: middle; }
li.folder .badge { background: #fce588; color: #8d2b0b; }
li.app .badge { background: #c6f7e2; color: #014d40; }
li.no-app .badge { background: #e4e7eb; color: #52606d; }
li.error .badge { background: #ffbdbd; color: #610404; }
p.empty { margin: 0 2em; color: #627d98; }
"""
BADGES = {"folder": "DIR", "app": "APP", "no-app": "PY", "error": "ERROR"}


def shown(root: Path) -> str:
    """The folder as its developer knows it: relative to where the server was started, when inside."""
    relative = os.path.relpath(root)
    return str(root) if relative.startswith("..") else relative


def index_app(root: Path, rel: str) -> type[AppRunner]:
    """The index of ``rel`` (a folder below ``root``)."""

    class Index(Tag.App):
        statics = [Tag.style(STYLE)]

        def init(self) -> None:
            self.entries = State(scan(root, rel))
            title = "/" + rel if rel else "/"
            with Tag.header():
                Tag.h1(f"htag apps in {title}")
                Tag.p(f"{shown(root)} — served by htagweb, one process per user and app; edit a file and press F5")
            with Tag.nav():
                Tag.a("home", _href="/")
                path = ""
                for part in [p for p in rel.split("/") if p]:
                    path += "/" + part
                    Tag.span(" / ")
                    Tag.a(part, _href=path + "/")
            Tag.div(lambda: self.render_entries(self.entries.value), _id="listing")

        def on_mount(self) -> None:  # F5 lists the folder again
            self.entries.value = scan(root, rel)

        @staticmethod
        def render_entries(entries: list[Entry]) -> Tag:
            if not entries:
                return Tag.p("No sub-folder and no Python file here.", _class="empty")
            items = Tag.ul(_class="entries")
            for entry in entries:
                item = Tag.li(_class=entry.kind)
                item.add(Tag.span(BADGES[entry.kind], _class="badge"))
                item.add(Tag.a(entry.name, _href=entry.url) if entry.kind in ("folder", "app", "error") else Tag.span(entry.name))
                item.add(Tag.small({"folder": "folder", "app": f"htag app: {entry.detail}"}.get(entry.kind, entry.detail)))
                items.add(item)
            return items

    Index.__name__ = Index.__qualname__ = "htagweb index"
    return Index
