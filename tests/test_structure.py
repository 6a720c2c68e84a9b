"""The package's structure: no circle of imports between its modules.

A circle (once host ↔ process ↔ rehearsal, closed by imports for type checkers) means
modules that cannot be read, tested or replaced one without the others; at run time it
makes a module's behaviour depend on which of its circle is imported first. Read from
the source, imports for type checkers and in function bodies included, so that a circle
is found before an import order trips on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "htagweb"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports: at its top, in a function, or for type
    checkers (``if TYPE_CHECKING:``). ``from . import x`` imports the module ``x``, not its
    package again."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        pending += ast.iter_child_nodes(node)
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = node.module if not node.level else ".".join(filter(None, (base, node.module)))
            assert source is not None
            submodules = {f"{source}.{alias.name}" for alias in node.names} & modules.keys()
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(source)
    return (found & modules.keys()) - {name}


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph``, if it has any (depth-first, three colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_circle_finder_finds_a_circle_and_only_one():
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "import pkg.d\n"
        "def late():\n    from .e import other\n"
        "if TYPE_CHECKING:\n    from .f import Hint\n"
    )
    (tmp_path / "a.py").write_text(source)
    modules = {f"pkg.{name}": tmp_path / f"{name}.py" for name in "abcdef"}
    assert imported("pkg.a", tmp_path / "a.py", modules) == {"pkg.b", "pkg.c", "pkg.d", "pkg.e", "pkg.f"}


def test_no_module_of_the_package_imports_itself_through_others():
    modules = module_names()
    assert {"htagweb", "htagweb.front", "htagweb.forkserver.loop"} <= modules.keys()
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["htagweb.forkserver.loop"] >= {"htagweb.forkserver.zygotes", "htagweb.config"}
    assert circle(graph) is None, " -> ".join(circle(graph) or [])
