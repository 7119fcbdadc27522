"""No import cycles among cwpo_jax's modules.

Every import of one of our modules counts, at module level or inside a function. A
module-level-only check is the usual choice (only those imports can fail half-initialised), but
it misses the cycles that a deferred import hides: models.llama and models.stacking imported
each other for a long time, one side inside a function. Functions here defer heavy third-party
packages (flax, transformers), never our own layering, so counting them costs nothing and keeps
the layers one-way. `import a.b.c` also runs the packages `a` and `a.b`; those edges count too,
except a module's edge to its own parent package (always imported first).
"""
from __future__ import annotations

import ast
import os

import cwpo_jax

ROOT = os.path.dirname(cwpo_jax.__file__)
PACKAGE = "cwpo_jax"

# Modules left out of the check, each for a named reason (empty when nothing is).
EXCLUDED: frozenset[str] = frozenset()


def module_files() -> dict[str, str]:
    """{dotted module name: file} for every .py file in the package."""
    out = {}
    for directory, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(directory, f), os.path.dirname(ROOT))
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = os.path.join(directory, f)
    return out


def _with_parents(name: str, modules) -> set[str]:
    """`name` and the packages above it that are modules of ours (importing a.b runs a)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules


def imports_of(module: str, file: str, modules: set[str]) -> set[str]:
    with open(file) as f:
        tree = ast.parse(f.read(), file)
    is_package = os.path.basename(file) == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                out |= _with_parents(alias.name, modules)
            continue
        if node.level:  # relative: resolve against this module's package
            base = module.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        out |= _with_parents(target, modules)
        for alias in node.names:  # `from pkg import submodule`
            out |= _with_parents(f"{target}.{alias.name}", modules)
    out.discard(module)
    return {m for m in out if not module.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    modules = set(files)
    return {m: imports_of(m, f, modules) for m, f in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_graph_sees_known_edges():
    graph = import_graph()
    assert "cwpo_jax.models.layers" in graph["cwpo_jax.models.llama"]
    assert "cwpo_jax.sharding" in graph["cwpo_jax.models.scan"]  # from a import b
    assert "cwpo_jax.models.families" in graph["cwpo_jax.models.stacking"]  # from pkg import mod
    assert "cwpo_jax.models.gguf_io" in graph["cwpo_jax.models.tokenizer"]  # in a function


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = {m: deps - EXCLUDED for m, deps in import_graph().items() if m not in EXCLUDED}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
