"""What to run: turns the many ways of naming an htag app into one class.

Accepted: a ``Tag.App`` subclass, a plain component class (``class App(Tag.div)``,
wrapped in a ``Tag.App``), a ``"module:Class"`` string, or a module (or module
name) holding an ``App``. Strings are resolved lazily, in the fork-server, so the
front never imports app code it was only given by name.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from htag import Tag
from htag.core import GTag
from htag.runner import AppRunner


class AppLoadError(Exception):
    """The app could not be imported or is not an htag app."""


@dataclass(frozen=True)
class AppSpec:
    name: str
    target: Any  # a class, a module, or None when ``name`` is an import string

    @classmethod
    def of(cls, app: Any) -> AppSpec:
        if isinstance(app, AppSpec):
            return app
        if isinstance(app, str):
            return cls(app, None)
        if isinstance(app, types.ModuleType):
            return cls(app.__name__, app)
        if isinstance(app, type) and issubclass(app, GTag):
            return cls(f"{app.__module__}:{app.__qualname__}", app)
        raise TypeError(f"not an htag app: {app!r} (want a Tag.App subclass, a component class, 'module:Class' or a module)")

    @property
    def identity(self) -> str:
        """The name, with the script's real path for a class of ``__main__``: two scripts
        of one folder both define ``__main__:App``, yet are two different apps."""
        module, _, qualname = self.name.partition(":")
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if module == "__main__" and main_file:
            return f"{Path(main_file).resolve()}:{qualname}"
        return self.name

    def load(self) -> type[AppRunner]:
        target = self.target
        if target is None:
            target = _import(self.name)
        if isinstance(target, types.ModuleType):
            if not hasattr(target, "App"):
                raise AppLoadError(f"module {target.__name__!r} has no 'App'")
            target = target.App
        if not (isinstance(target, type) and issubclass(target, GTag)):
            raise AppLoadError(f"{self.name!r} is not an htag class: {target!r}")
        return as_app(target)


def _import(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"cannot import {module_name!r}: {exc!r}") from exc
    if not attr:
        return module
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no {attr!r}") from None
    return obj


def as_app(component: type[GTag]) -> type[AppRunner]:
    """Wrap a plain component so it can be the root of a page."""
    if issubclass(component, AppRunner):
        return component

    def init(self: AppRunner) -> None:
        self.add(component())

    return type(component.__name__, (Tag.App,), {"init": init, "__module__": component.__module__})
