"""Import cycles between the modules of a package, counting imports placed inside functions.

A cycle hidden behind an import inside a function still ties the modules together: neither can be read,
tested or moved without the other. This script reads the source with `ast` (it imports nothing), so it sees
every `import resnet.x`, `from resnet.x import y` (an edge to resnet.x.y when y is a submodule, to the
package resnet.x when y is a name its `__init__` re-exports), relative imports and
`importlib.import_module("resnet.x")` with a literal name. Imports under `if TYPE_CHECKING:` count too (a
type named from another module ties the two as much as a call does). A module that imports by a name computed
at run time (`importlib.import_module(variable)`: the `_LAZY` tables of resnet/__init__.py and
resnet/train/__init__.py, the CLI's COMMANDS) has an edge, inside a function, to every module whose full name
stands in it as a string. Importing resnet.x.y also runs resnet/x/__init__.py; that implicit edge is not
counted (a package that re-exports its submodules would otherwise be a cycle with each of them).

    python tools/import_cycles.py            # the cycles, one per line, and the count of imports in functions
    python tools/import_cycles.py --lazy     # also every internal import inside a function, with its line
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    """One import statement: `source` imports `target` at `line`; `lazy` when inside a function."""

    source: str
    target: str
    line: int
    lazy: bool


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file for every module of the package (a package's name maps to its __init__.py)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules (None for third-party modules)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _base_of(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of `from <base> import ...`, relative imports included."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    parts = parts if is_package else parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _targets(node: ast.AST, module: str, modules: dict[str, Path]) -> list[str]:
    """Our modules that one import node (or import_module call) loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _base_of(node, module, modules[module].name == "__init__.py")
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        names = [node.args[0].value]
    else:
        return []
    found = {_resolve(name, modules) for name in names}
    return sorted(t for t in found if t is not None and t != module)


def module_edges(module: str, modules: dict[str, Path]) -> list[Edge]:
    """The import edges of one module, each marked lazy when it sits inside a function."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"), filename=str(modules[module]))
    edges: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            for target in _targets(child, module, modules):
                edges.append(Edge(module, target, child.lineno, lazy))
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    dynamic = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and node.args
               and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
               and not isinstance(node.args[0], ast.Constant)]
    if dynamic:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in modules and node.value != module:
                edges.append(Edge(module, node.value, node.lineno, True))
    return edges


def all_edges(package_dir: Path = ROOT / "resnet") -> list[Edge]:
    """Every internal import edge of the package."""
    modules = module_names(package_dir)
    return [edge for module in modules for edge in module_edges(module, modules)]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (each a set of modules in a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def _shortest_path(graph: dict[str, set[str]], start: str, goal: str, within: set[str]) -> list[str]:
    """Breadth-first path start -> goal inside one component."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for other in sorted(graph.get(node, ()) & within):
                if other not in previous:
                    previous[other] = node
                    following.append(other)
        frontier = following
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """One shortest cycle through each import edge inside a strongly connected component, deduplicated:
    every edge that closes a circle shows in at least one listed cycle."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    found: dict[tuple[str, ...], list[str]] = {}
    for component in strongly_connected(graph):
        members = set(component)
        for source in component:
            for target in sorted(graph[source] & members):
                cycle = [source] + _shortest_path(graph, target, source, members)[:-1]
                turn = cycle.index(min(cycle))
                cycle = cycle[turn:] + cycle[:turn]
                found.setdefault(tuple(cycle), cycle)
    return [found[key] for key in sorted(found)]


def main(argv: list[str] | None = None) -> int:
    """Print the cycles (exit status 1 when there is one) and the count of imports inside functions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=ROOT / "resnet", help="the package folder (default: resnet/)")
    parser.add_argument("--lazy", action="store_true", help="list every internal import inside a function")
    args = parser.parse_args(argv)
    edges = all_edges(args.package)
    found = cycles(edges)
    for cycle in found:
        print("cycle: " + " -> ".join(cycle + cycle[:1]))
    lazy = [edge for edge in edges if edge.lazy]
    if args.lazy:
        for edge in lazy:
            print(f"lazy: {edge.source}:{edge.line} -> {edge.target}")
    print(f"{len(found)} cycles; {len(lazy)} of {len(edges)} internal imports are inside functions")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
