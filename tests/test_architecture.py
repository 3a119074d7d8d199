"""The package's import graph has no circles: every module import is read from the source (those
inside functions too), and a strongly connected component of more than one module fails the test by name."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "negalign"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("negalign"):
                targets = [resolve(f"{node.module}.{alias.name}") for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names if alias.name.startswith("negalign")]
            graph[name] |= {t for t in targets if t and t != name and t != "negalign"}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    graph = import_graph()
    assert "negalign.trainer" in graph and "negalign.methods" in graph["negalign.trainer"]  # the graph is read
    assert circles(graph) == []


def _config_walk():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "config_walk.py"
    spec = importlib.util.spec_from_file_location("config_walk", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_following_config_through_a_training_run_stays_short():
    """The bound: at most 30 stops, at most 8 returns to a file already left or climbs to a higher floor.
    The walk must find the stops every run has, so an empty walk cannot pass."""
    walk = _config_walk()
    stops = walk.walk()
    reached = {f"{module}:{name}" for _, module, name in stops}
    assert {"negalign.reference:Reference.__init__", "negalign.trainer:NegalignTrainer.__init__",
            "negalign.batches:prepare_items", "negalign.provenance:write_provenance"} <= reached
    counts = walk.counts(stops)
    assert counts["stops"] <= 30 and counts["climbs"] + counts["re-entries"] <= 8, counts


def test_the_run_is_assembled_in_one_place():
    """The collator is made once (negalign.assemble), for negalign.train and NegalignTrainer(...) alike, and the
    trainer names no method: what is particular to one lives with its Method (objectives/)."""
    sources = {path: path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py")}
    made = [str(path.relative_to(PACKAGE)) for path, text in sources.items() for _ in range(text.count("partial(collate"))]
    assert made == ["assemble.py"]
    trainer = (PACKAGE / "trainer.py").read_text(encoding="utf-8")
    assert not any(name in trainer for name in ("kl_on_samples", '"d2o"', "from_reference"))
