"""The package's layout: no import circles between dermfm modules, no private names across
packages. Read from the source with ``ast`` (nothing is imported).

Two import graphs are checked:

* **module level**: every import outside a function or class body, ``if TYPE_CHECKING:`` blocks
  included (a type checker follows them): no circle at all;
* **all imports**, those inside functions too: no circle either, except the few deferred edges
  listed in ``DEFERRED`` with their reason; each must still exist and be deferred, so the list
  cannot outlive the code.

The root package ``dermfm`` is a lazy facade (it re-exports the API by name through
``import_module``), so its own imports are not edges; modules inside may read ``__version__``
from it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "dermfm"

#: Imports made inside a function that close a circle with a module-level import the other
#: way, each with its reason. Breaking them is welcome; adding one needs a reason as good.
DEFERRED = {
    ("dermfm.adapters", "dermfm.zeroshot"): "an adapter is fitted on the zero-shot classifier's "
    "scores, and the classifier applies the adapter it is given",
    ("dermfm.adapters", "dermfm.evaluate.tasks"): "fitting embeds labelled records with the "
    "evaluation's embed_records, and the evaluation scores with adapters",
    ("dermfm.store.sources", "dermfm.retrieval"): "a store source reads a CSV case list as the "
    "index does, and the index builds from a store",
}


@dataclass(frozen=True)
class Import:
    """One import of a dermfm module: the dotted path as written, the module it lands in."""

    source: str
    path: str  # ``dermfm.data.shards.pack_shards`` for ``from dermfm.data.shards import ...``
    target: str
    deferred: bool  # inside a function or class body


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _owner(name: str) -> str:
    """The longest dermfm module that ``name`` (a dotted path) is or lies in."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _walk(node: ast.AST, deferred: bool = False):
    for child in ast.iter_child_nodes(node):
        yield child, deferred
        inner = deferred or isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
        )
        yield from _walk(child, inner)


def _imports(module: str) -> list[Import]:
    path, is_package = MODULES[module]
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node, deferred in _walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT:
                    found.append(Import(module, alias.name, _owner(alias.name), deferred))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            if base.split(".")[0] != ROOT:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append(Import(module, full, _owner(full), deferred))
    return found


IMPORTS = [i for module in MODULES for i in _imports(module)]


def _edges(*, deferred: bool) -> set[tuple[str, str]]:
    return {
        (i.source, i.target)
        for i in IMPORTS
        if i.source != ROOT
        and i.source != i.target
        and (deferred or not i.deferred)
        # ``from dermfm import __version__``, or ``import dermfm`` for ``dermfm.__version__``
        and i.target != ROOT
    }


def _circles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def _describe(circles: list[list[str]], edges: set[tuple[str, str]]) -> str:
    lines = []
    for circle in circles:
        members = set(circle)
        lines.append(" <-> ".join(circle))
        lines += [f"    {a} -> {b}" for a, b in sorted(edges) if a in members and b in members]
    return "\n".join(lines)


def test_the_source_is_found() -> None:
    assert {"dermfm.cli", "dermfm.cli.common", "dermfm.data.sources"} <= set(MODULES)
    assert len(IMPORTS) > 200


def test_no_import_circle_at_module_level() -> None:
    edges = _edges(deferred=False)
    circles = _circles(edges)
    assert not circles, "import circles (module level):\n" + _describe(circles, edges)


def test_no_import_circle_with_deferred_imports_but_the_listed_ones() -> None:
    edges = _edges(deferred=True)
    circles = _circles(edges - set(DEFERRED))
    assert not circles, "import circles (imports in functions too):\n" + _describe(
        circles, edges - set(DEFERRED)
    )


def test_each_listed_deferred_import_exists_and_is_deferred() -> None:
    for source, target in DEFERRED:
        found = [i for i in IMPORTS if (i.source, i.target) == (source, target)]
        assert found, f"{source} no longer imports {target}: drop it from DEFERRED"
        assert all(i.deferred for i in found), f"{source} imports {target} at module level"
        assert _circles(_edges(deferred=True) - (set(DEFERRED) - {(source, target)})), (
            f"{source} -> {target} closes no circle any more: drop it from DEFERRED"
        )


def _scope(path: str) -> str | None:
    """The package a private name is private to, or ``None`` for a public one: a private
    module ``a.b._m`` (or a name in it) belongs to ``a.b``, a private name ``_x`` of a module
    ``a.b.m`` to ``a.b``, and of a package ``a.b`` to ``a.b``."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            return owner if MODULES[owner][1] else owner.rpartition(".")[0]
    return None


def test_no_private_name_is_imported_across_packages() -> None:
    crossing = [
        f"{i.source} imports {i.path} (private to {scope})"
        for i in IMPORTS
        if (scope := _scope(i.path)) is not None
        and not (i.source == scope or i.source.startswith(scope + "."))
    ]
    assert not crossing, "\n".join(crossing)


def test_the_checks_catch_what_they_look_for() -> None:
    """The circle finder and the scope rule on made-up cases, so a green run means something."""
    assert _circles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert _circles({("a", "b"), ("b", "c")}) == []
    assert _scope("dermfm.data.shards._add_member") == "dermfm.data"
    assert _scope("dermfm.data._anything") == "dermfm.data"
    assert _scope("dermfm._inputs.as_batch") == "dermfm"
    assert _scope("dermfm.data.shards.pack_shards") is None
