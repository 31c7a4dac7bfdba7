"""The package's import graph, read from its source: no cycles, counting
imports inside functions too; and a server config never loads the
embedded engine."""

import ast
import os
import subprocess
import sys

import fiftyone_qdrant

PACKAGE_DIR = os.path.dirname(fiftyone_qdrant.__file__)
PACKAGE = "fiftyone_qdrant"


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
    """module -> the package modules it imports (anywhere in its code)."""
    paths = [os.path.join(d, f) for d, _, fs in os.walk(PACKAGE_DIR) for f in fs if f.endswith(".py")]
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:  # `from pkg import module` imports the module
                    targets.add(base + "." + alias.name if base + "." + alias.name in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_right():
    graph = import_graph()
    assert "fiftyone_qdrant.planner" in graph["fiftyone_qdrant.similarity"]
    assert "fiftyone_qdrant.models" in graph["fiftyone_qdrant.build"]  # a function-level import counts
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_pure_modules_import_nothing_heavy():
    graph = import_graph()
    assert graph["fiftyone_qdrant.planner"] == set()
    assert graph["fiftyone_qdrant.brain_internals"] == set()
    assert graph["fiftyone_qdrant.integration"] <= {"fiftyone_qdrant.similarity", "fiftyone_qdrant.brain_internals",
                                                   "fiftyone_qdrant.models"}


def test_a_server_config_never_imports_the_embedded_engine():
    code = (
        "import sys\n"
        "from fiftyone_qdrant.similarity import QdrantSimilarityConfig\n"
        "QdrantSimilarityConfig(url='http://qdrant.example:6333', hnsw_config={'m': 16},\n"
        "                       quantization_config={'scalar': {'type': 'int8'}}).connection_settings().connect()\n"
        "loaded = [m for m in sys.modules if m.startswith(('qdrant_edge', 'fiftyone_qdrant.service',\n"
        "                                                    'fiftyone_qdrant.indexing', 'fiftyone_qdrant.local'))]\n"
        "print(loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
