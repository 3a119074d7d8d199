"""Follow `config` from negalign.pipeline.train through every call that passes it on.

Read from the source with `ast`, so the count is the same for anyone who runs it: a *stop* is one call whose
arguments include the variable holding the config (positionally or by keyword), resolved to a function of the
package (a module function, an imported name, `module.f`, `self.f`, or a class, which means its __init__); the
walk then continues in that function with the parameter that received the config. Each function is walked
once. A *climb* is a stop into a module on a higher floor than the caller's (floor = the longest chain of
package imports below a module, as docs/architecture.md draws them); a *re-entry* is a stop into a file the
walk had already left. Attributes that hold the config (`self.args`) are not followed: only what is passed.

    python scripts/config_walk.py                 # the stops, then the counts
    python scripts/config_walk.py --root OTHER    # the same walk over another checkout (e.g. an older commit)
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_architecture import import_graph  # noqa: E402

PACKAGE = ROOT / "negalign"  # --root replaces it


@functools.cache
def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


@functools.cache
def _parsed(module: str) -> ast.Module:
    return ast.parse(_modules()[module].read_text(encoding="utf-8"))


def _imports(module: str) -> dict[str, str]:
    """Local name -> 'module' or 'module:name' for every package import in the module (any scope)."""
    table, modules = {}, _modules()
    for node in ast.walk(_parsed(module)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("negalign"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                table[alias.asname or alias.name] = full if full in modules else f"{node.module}:{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("negalign") and alias.asname:
                    table[alias.asname] = alias.name
    return table


def _definition(module: str, name: str, seen=()) -> tuple[str, str, ast.AST] | None:
    """(module, qualified name, node) of a function or class `name` defined in or re-exported by `module`."""
    if module not in _modules() or (module, name) in seen:
        return None
    for node in _parsed(module).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return module, name, node
    target = _imports(module).get(name)
    if target and ":" in target:
        other, other_name = target.split(":")
        return _definition(other, other_name, seen + ((module, name),))
    return None


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _resolve(module: str, cls: ast.ClassDef | None, func: ast.expr):
    """(module, qualified name, function node, is_method) for a call's target, or None (outside the package)."""
    if isinstance(func, ast.Name):
        found = _definition(module, func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id == "self" and cls is not None:
            node = _method(cls, func.attr)
            return (module, f"{cls.name}.{func.attr}", node, True) if node else None
        target = _imports(module).get(func.value.id)
        found = _definition(target, func.attr) if target and ":" not in target else None
    else:
        return None
    if found is None:
        return None
    where, name, node = found
    if isinstance(node, ast.ClassDef):
        init = _method(node, "__init__")
        return (where, f"{name}.__init__", init, True) if init else None
    return where, name, node, False


def _spelled(node: ast.expr) -> str | None:
    """`name` or `self.attribute`: the two ways a function holds the config."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def _receiving_parameter(node: ast.FunctionDef, is_method: bool, call: ast.Call, variable: str) -> str | None:
    params = [a.arg for a in node.args.posonlyargs + node.args.args][1 if is_method else 0:]
    for index, arg in enumerate(call.args):
        if _spelled(arg) == variable and index < len(params):
            return params[index]
    names = params + [a.arg for a in node.args.kwonlyargs]
    for keyword in call.keywords:
        if _spelled(keyword.value) == variable:
            if keyword.arg in names:
                return keyword.arg
            if node.args.kwarg is not None:  # into **kwargs: a Trainer's `args=` is kept as self.args
                return keyword.arg
    return None


def _kept_as(init: ast.FunctionDef, cls: ast.ClassDef, parameter: str) -> set[str]:
    """The attributes a class keeps the config in: `self.x = parameter` in __init__, and `self.args` when a
    Trainer subclass passes `args` on to Trainer.__init__."""
    pairs = []
    for n in (n for n in ast.walk(init) if isinstance(n, ast.Assign)):
        for target in n.targets:
            if isinstance(target, ast.Tuple) and isinstance(n.value, ast.Tuple):  # self.a, self.b = a, b
                pairs += zip(target.elts, n.value.elts)
            else:
                pairs.append((target, n.value))
    kept = {_spelled(t) for t, v in pairs if _spelled(v) == parameter and (_spelled(t) or "").startswith("self.")}
    if parameter == "args" and any(_spelled(b) == "Trainer" or getattr(b, "id", "") == "Trainer" for b in cls.bases):
        kept.add("self.args")
    return kept


def _package_bases(module: str, cls: ast.ClassDef) -> list[tuple[str, ast.ClassDef]]:
    """(module, class) of each base class of `cls` defined in the package (a mixin such as
    provenance.RecordsProvenance), whose methods see the same `self`."""
    found = [_definition(module, base.id) for base in cls.bases if isinstance(base, ast.Name)]
    return [(where, node) for where, _, node in filter(None, found) if isinstance(node, ast.ClassDef)]


def _enclosing_classes(tree: ast.Module) -> dict[int, ast.ClassDef]:
    return {id(fn): cls for cls in tree.body if isinstance(cls, ast.ClassDef) for fn in cls.body}


def walk(start_module: str = "negalign.pipeline", start: str = "train", variable: str = "config") -> list[tuple]:
    """The stops, in order: (caller module, callee module, callee qualified name)."""
    stops, visited = [], set()

    def visit(module: str, qualname: str, node: ast.FunctionDef, variable: str):
        if (module, qualname) in visited:
            return
        visited.add((module, qualname))
        cls = _enclosing_classes(_parsed(module)).get(id(node))
        if cls is not None and node.name == "__init__" and not variable.startswith("self."):
            for attribute in _kept_as(node, cls, variable):  # the config lives on: every method can pass it
                for where, owner in ((module, cls), *_package_bases(module, cls)):  # its mixins' methods too
                    for other in owner.body:
                        if isinstance(other, ast.FunctionDef) and other.name != "__init__":
                            visit(where, f"{owner.name}.{other.name}", other, attribute)
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            target = _resolve(module, cls, call.func)
            if target is None:
                continue
            where, name, callee, is_method = target
            parameter = _receiving_parameter(callee, is_method, call, variable)
            if parameter is None:
                continue
            stops.append((module, where, name))
            visit(where, name, callee, parameter)

    _, name, node = _definition(start_module, start)
    visit(start_module, name, node, variable)
    return stops


def floors() -> dict[str, int]:
    graph, busy = import_graph(PACKAGE), set()

    @functools.cache
    def floor(module: str) -> int:
        busy.add(module)  # an import circle (older checkouts) is cut where the walk meets it again
        below = [floor(m) for m in graph[module] if m not in busy]
        busy.discard(module)
        return 1 + max(below, default=-1)

    return {m: floor(m) for m in graph}


def counts(stops: list[tuple]) -> dict:
    floor = floors()
    files, left, reentries, climbs = [], set(), 0, 0
    for caller, callee, _ in stops:
        climbs += floor[callee] > floor[caller]
        if callee != caller:
            left.add(caller)
            reentries += callee in left
        files.append(callee)
    return {"stops": len(stops), "files": len(set(files) | {"negalign.pipeline"}), "climbs": climbs,
            "re-entries": reentries}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="a checkout whose negalign/ is walked (default: this one)")
    if (root := parser.parse_args().root) is not None:
        PACKAGE = root.resolve() / "negalign"
    found = walk()
    for caller, callee, name in found:
        print(f"{caller:32s} -> {callee}:{name}")
    print(counts(found))
