"""What a user process runs, and when a development app's process is stale.

An app of the server is imported once, before the zygote is forked or in a next zygote
(:mod:`.zygote`), so that every user process shares it copy-on-write (and spares can
be forked with it). A file app of a development folder is imported in its own process
instead, afresh when its source or a module of the folder it imported changed (see
:mod:`htagweb.folder`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from .. import folder
from ..appspec import AppSpec
from ..devindex import index_app
from ..immortal import share
from ..runtime import Runtime
from .messages import Source


class AppLoader:
    def __init__(self, apps: dict[str, AppSpec], runtime: Runtime) -> None:
        self.apps = apps
        self.runtime = runtime
        #: the app classes imported here, by name: what spares are forked with
        self.classes: dict[str, type] = {}

    @staticmethod
    def per_process(source: Source | None) -> bool:
        """Whether the app is imported in each of its processes (a development file app)."""
        return source is not None and source["kind"] == "file"

    def load(self, key: str, app: str, source: Source | None) -> Callable[[], type]:
        """What the user process of ``key`` calls to get its class. An app imported
        here raises now if it cannot be; a file app raises in its process."""
        if self.per_process(source):
            assert source is not None
            root, rel, name, deps_file = Path(source["root"]), source["rel"], source["class"], self.deps_file(key)
            return lambda: folder.load_file_app(root, rel, name, deps_file)
        app_cls = self.imported(app, source)
        return lambda: app_cls

    def stale(self, key: str, source: Source | None) -> bool:
        """Whether the running process of ``key`` runs source that changed since."""
        return self.per_process(source) and folder.changed(self.deps_file(key))

    def forget(self, key: str) -> None:
        self.deps_file(key).unlink(missing_ok=True)

    def deps_file(self, key: str) -> Path:
        return self.runtime.users_dir / f"{key}.deps"

    def import_given(self) -> None:
        """Import now the apps given as classes or modules (their code ran already): the zygote
        starts with them. An app named by a string is imported in a next zygote (see
        :mod:`.imports`); one that fails here is tried there at its first visit (it says why then)."""
        for name, spec in self.apps.items():
            if spec.target is not None:
                with contextlib.suppress(Exception):
                    self.imported(name, None)

    def named(self) -> list[str]:
        """The apps named by strings: imported in next zygotes (see :mod:`.imports`)."""
        return [name for name, spec in self.apps.items() if spec.target is None]

    def imported(self, app: str, source: Source | None) -> type:
        """The class of ``app``, imported here once (raises if it cannot be)."""
        if app not in self.classes:
            if source is not None:  # a folder index: our own code, loaded once
                self.classes[app] = index_app(Path(source["root"]), source["rel"])
            else:
                self.classes[app] = self.apps.get(app, AppSpec(app, None)).load()
            share()  # shared copy-on-write from now on
        return self.classes[app]
