"""The package's imports flow one way: no module of ``packer`` imports, at any depth and from any place in its
code (a function body included), a module that imports it back."""
import ast
from pathlib import Path

import packer

from tests.conftest import REPO

PACKAGE = REPO / "packer"
LAZY = packer._LAZY  # name -> module, for `from packer import NAME`


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each packer module -> the packer modules it imports anywhere in its source."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                # `from packer import kernels` imports the module packer.kernels; `from packer import pack_dataset`
                # the module the package loads it from on first use (packer._LAZY); anything else the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules
                           else LAZY.get(a.name, base) if base == "packer" else base for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycle_inside_packer():
    graph = import_graph()
    assert {"packer.convert", "packer.jobs", "packer.engines", "packer.shards"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_lazy_top_level_import_counts_as_its_module(tmp_path):
    """`from packer import pack_dataset` inside packer.plan would import packer.convert: the graph says so."""
    pkg = tmp_path / "packer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plan.py").write_text("def f():\n    from packer import PackConfig\n")
    (pkg / "convert.py").write_text("from packer import plan\n")
    import tests.test_layers as layers

    saved = layers.REPO, layers.PACKAGE
    layers.REPO, layers.PACKAGE = tmp_path, pkg
    try:
        graph = layers.import_graph()
    finally:
        layers.REPO, layers.PACKAGE = saved
    assert graph["packer.plan"] == {"packer.convert"} and find_cycle(graph) == ["packer.convert", "packer.plan",
                                                                                 "packer.convert"]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_never_import_upper_ones():
    graph = import_graph()
    lower = {"packer.kernels", "packer.plan", "packer.format", "packer.writer", "packer.shards",
             "packer.packed_reader", "packer.stats", "packer.schedule", "packer.errors"} | set(INPUT_LAYER)
    upper = {"packer.convert", "packer.jobs", "packer.engines", "packer.plot"} | {
        m for m in graph if m.startswith(("packer.torch", "packer.cli", "packer.verify", "packer.report"))}
    for m in lower:
        assert not graph[m] & upper, (m, graph[m] & upper)
    # only the torch layer itself imports the torch layer
    for m, deps in graph.items():
        if not m.startswith("packer.torch"):
            assert not any(d.startswith("packer.torch") for d in deps), m


REPORT_LAYERS = ["packer.report.training", "packer.report.padding", "packer.report.comparison", "packer.report.sources"]


def test_report_modules_import_one_way():
    """training <- padding <- comparison <- sources; render reads the comparison only; the package imports them all."""
    graph = import_graph()
    report = {m for m in graph if m.startswith("packer.report.")}
    assert report == {*REPORT_LAYERS, "packer.report.render"}, report
    for i, m in enumerate(REPORT_LAYERS):
        assert graph[m] & report <= set(REPORT_LAYERS[:i]), (m, graph[m] & report)
        assert "packer.report" not in graph[m], m
    assert graph["packer.report.render"] & (report | {"packer.report"}) <= {"packer.report.comparison"}
    assert report <= graph["packer.report"]


INPUT_LAYER = ["packer.input.paths", "packer.input.formats", "packer.input.columns", "packer.input.tokenized",
               "packer.input.packed", "packer.input.scan", "packer.input"]
"""The input layer's modules, each importing only those before it (the package re-exports them all)."""


def test_the_input_layer_imports_one_way():
    graph = import_graph()
    assert {m for m in graph if m == "packer.input" or m.startswith("packer.input.")} == set(INPUT_LAYER)
    for i, m in enumerate(INPUT_LAYER):
        assert not graph[m] & set(INPUT_LAYER[i:]), (m, graph[m] & set(INPUT_LAYER[i:]))
