"""The layering the README draws, checked from the source: no import cycles (deferred imports included),
and no import that points the wrong way (the device code never reaches workstation tools or simulators)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_runtime", "converters", "devices")

# What the code that runs on the device may never import.
DEVICE_CODE = (
    "edge_runtime.serving",
    "edge_runtime.mqtt",
    "edge_runtime.engines",
    "edge_runtime.tasks",
    "edge_runtime.bundle",
    "edge_runtime.fleet",
    "edge_runtime.observability",
    "edge_runtime.config",
    "edge_runtime.topics",
    "edge_runtime.registry",
    "edge_runtime.errors",
    "edge_runtime.vocabulary",
    "edge_runtime.children",
)
WORKSTATION = (
    "edge_runtime.devtools",
    "edge_runtime.bench",
    "edge_runtime.cli",
    "converters",
    "devices.sensors",
    "devices.cameras",
    "devices.fleet",
    "devices.recording",
    "devices.simulate",
    "devices.scenes",
    "devices.deploy",
    "devices._cli",
)
RULES = [
    (DEVICE_CODE, WORKSTATION, "the device code imports a workstation tool or simulator"),
    (("edge_runtime.mqtt",), ("edge_runtime.serving",), "the MQTT layer imports the serving core"),
    (
        ("edge_runtime.bundle", "edge_runtime.tasks", "edge_runtime.engines"),
        ("edge_runtime.serving",),
        "a lower layer imports the serving core",
    ),
    # The fleet agent reaches the runtime only through its Host interface (fleet/host.py); serving uses it.
    (("edge_runtime.fleet",), ("edge_runtime.serving",), "the fleet agent imports the serving core"),
    (
        ("devices",),
        ("edge_runtime.serving", "edge_runtime.devtools", "edge_runtime.bench"),
        "devices reaches into the runtime's serving core or tools (simulators are MQTT clients)",
    ),
    (
        ("converters",),
        ("edge_runtime.serving", "edge_runtime.devtools", "edge_runtime.bench"),
        "a converter reaches into the serving core or tools",
    ),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (top level or deferred in a function)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {  # `if TYPE_CHECKING:` imports never run: annotations only
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for target in targets:
            # the deepest project module the import names (``from x import y`` may name a function of x)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("sources, forbidden, why", RULES, ids=[r[2] for r in RULES])
def test_imports_point_one_way(graph, sources, forbidden, why):
    wrong = sorted(
        f"{m} -> {t}" for m, targets in graph.items() if _under(m, sources) for t in targets if _under(t, forbidden)
    )
    assert not wrong, f"{why}: {wrong}"


def test_the_graph_sees_deferred_and_relative_imports(graph):
    # runtime.py imports devices.detect at the top and prometheus inside a method; commands.py defers all
    assert "devices.detect" in graph["edge_runtime.serving.runtime"]
    assert "edge_runtime.observability.prometheus" in graph["edge_runtime.serving.runtime"]
    assert "edge_runtime.serving.runtime" in graph["edge_runtime.cli.commands"]
