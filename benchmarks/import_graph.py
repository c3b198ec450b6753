"""The import graph of the xrecon package, and its circles.

Reads every module's source (nothing is imported) and records an arrow ``a -> b`` for each import of
an xrecon module ``b`` in module ``a``: at module level and inside functions alike (a lazy import is
still an arrow), but not those under ``if TYPE_CHECKING:``, which never run. An import of a package
(``import xrecon.methods``, ``from xrecon import leakage``) points to the package's ``__init__``, or to
the submodule named. Prints one line per module with what it imports, then the circles (strongly
connected components of more than one module), and exits 1 when there is one.

    PYTHONPATH=. .venv/bin/python benchmarks/import_graph.py            # the graph and its circles
    PYTHONPATH=. .venv/bin/python benchmarks/import_graph.py --cycles   # only the circles
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "xrecon"


def module_names(root: Path) -> dict[str, Path]:
    """``xrecon.training.trainer`` -> its file, for every module of the package under ``root``."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The xrecon modules named by the imports that run (those under ``if TYPE_CHECKING:`` do not).

    ``from P import n`` points to the module ``P.n`` when there is one (as ``import P.n`` does), else to ``P``.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found & modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the xrecon modules it imports (itself excluded)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = _imports(tree, name, path.name == "__init__.py", set(modules)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(out, key=lambda c: (-len(c), c))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", action="store_true", help="print only the circles")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the project root")
    args = parser.parse_args()
    graph = import_graph(Path(args.root))
    if not args.cycles:
        for name in sorted(graph):
            print(f"{name} -> {', '.join(sorted(graph[name])) or '(nothing of xrecon)'}")
    found = cycles(graph)
    print(f"\n{len(graph)} modules, {sum(map(len, graph.values()))} arrows, {len(found)} circle(s)")
    for c in found:
        print("circle: " + " <-> ".join(c))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
