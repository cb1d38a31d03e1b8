"""The layer order of DESIGN.md, checked on the source text: no import cycle between files or
between top-level packages, and no package importing a layer above its own.

Every ``import`` statement counts, at module level or inside a function (a lazy import is
still a dependency), ``if TYPE_CHECKING:`` ones too. Imports by name at run time
(``importlib.import_module``: registry discovery, and the package root's
``registry.contribute`` declaration that lets model discovery find ``memory``) are not
edges; they are the registries' way of finding components without importing them.
The package is parsed, never imported, so a cycle cannot hide behind import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "longarena"

#: bottom to top; a package may import its own layer and those below it, never one above.
#: ``longarena`` is the package root (``__version__``), the other ground-floor names are modules.
LAYERS: list[set[str]] = [
    {"longarena", "constants", "config", "registry", "atomic", "jsonl", "plotting"},
    {"ops"},
    {"positions"},
    {"tasks"},
    {"mixers"},
    {"testing"},
    {"models"},
    {"memory"},
    {"train", "evals"},
    {"arena"},
    {"cli"},
]

#: (importing module, imported module) -> why the edge stays although a rule forbids it. Empty:
#: every such edge has been removed; an entry is a debt to pay, so give its reason and issue.
ALLOWED: dict[tuple[str, str], str] = {}

Sources = dict[str, tuple[str, bool]]  # module name -> (source text, is a package __init__)
Graph = dict[str, set[str]]


def read_sources(src: Path = SRC) -> Sources:
    out: Sources = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path.read_text(), is_package)
    return out


def _known(name: str, modules: set[str]) -> str | None:
    """The deepest module of ``modules`` that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(sources: Sources) -> Graph:
    """Module -> the package modules it imports (``from pkg import sub`` names the submodule)."""
    modules = set(sources)
    graph: Graph = {}
    for name, (text, is_package) in sources.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(text, filename=name)):
            if isinstance(node, ast.Import):
                targets.update(_known(a.name, modules) for a in node.names if a.name.split(".")[0] == ROOT)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # a package's own name is its anchor; a plain module's is its package's
                    anchor = name.split(".")[: None if is_package else -1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != ROOT:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else _known(base, modules))
        graph[name] = {t for t in targets if t is not None and t != name and (name, t) not in ALLOWED}
    return graph


def top(module: str) -> str:
    """The top-level package (or ground-floor module) ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle per strongly connected component of more than one node, as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(graph, c) for c in components]


def _closed_path(graph: Graph, component: set[str]) -> list[str]:
    """A shortest path from the component's first node back to itself, inside the component."""
    start = min(component)
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while (up := parent[path[-1]]) is not None:
                        path.append(up)
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start} in a strongly connected component")


def package_graph(graph: Graph) -> Graph:
    out: Graph = {}
    for a, targets in graph.items():
        out.setdefault(top(a), set()).update(top(b) for b in targets if top(b) != top(a))
    return out


def layer_violations(graph: Graph, layers: list[set[str]] = LAYERS) -> list[str]:
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    return [
        f"{a} imports {b}: {top(a)} (layer {rank[top(a)]}) sits below {top(b)} (layer {rank[top(b)]})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if top(a) in rank and top(b) in rank and rank[top(b)] > rank[top(a)]
    ]


def _edges_between(graph: Graph, p: str, q: str) -> list[str]:
    pairs = [(a, b) for a, targets in sorted(graph.items()) for b in sorted(targets)]
    return [f"{a} -> {b}" for a, b in pairs if top(a) == p and top(b) == q]


GRAPH = import_graph(read_sources())


def test_every_package_has_a_layer():
    placed = set().union(*LAYERS)
    missing = sorted({top(m) for m in GRAPH} - placed)
    assert not missing, f"place these in LAYERS (tests/test_layers.py) and in docs/layout.md: {missing}"


def test_no_cycle_between_files():
    found = cycles(GRAPH)
    assert not found, "import cycles between files:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_cycle_between_packages():
    packages = package_graph(GRAPH)
    lines = []
    for cycle in cycles(packages):
        lines.append(" -> ".join(cycle))
        for p, q in zip(cycle, cycle[1:]):
            lines.extend(f"    {edge}" for edge in _edges_between(GRAPH, p, q))
    assert not lines, "import cycles between packages, with the file edges behind them:\n" + "\n".join(lines)


def test_no_package_imports_a_higher_layer():
    found = layer_violations(GRAPH)
    assert not found, "imports of a higher layer (the order is LAYERS above):\n" + "\n".join(found)


def test_the_checks_find_planted_faults():
    # a checker that cannot fail proves nothing: plant a file cycle through a package
    # __init__ and a relative import, a package cycle, and an upward import, and find each
    planted: Sources = {
        "longarena": ("", True),
        "longarena.config": ("", False),
        "longarena.models": ("from longarena.models.backbone import Block", True),
        "longarena.models.backbone": ("def f():\n    from . import register\n", False),
        "longarena.memory": ("from longarena.models import backbone", True),
        "longarena.models.extra": ("import longarena.memory", False),
        "longarena.ops": ("from longarena.config import ConfigError", True),
    }
    graph = import_graph(planted)
    assert graph["longarena.models.backbone"] == {"longarena.models"}
    assert graph["longarena.memory"] == {"longarena.models.backbone"}
    assert cycles(graph) == [["longarena.models", "longarena.models.backbone", "longarena.models"]]
    assert cycles(package_graph(graph)) == [["memory", "models", "memory"]]
    assert layer_violations(graph) == [
        "longarena.models.extra imports longarena.memory: models (layer 6) sits below memory (layer 7)"
    ]
    assert not layer_violations({"longarena.ops": {"longarena.config"}})
