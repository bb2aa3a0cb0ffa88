"""The package's structure, read from its source: imports go one way (docs/ARCHITECTURE.md), with no circle.

Every import of the package's own modules counts, at the top of a module, inside a function (the lazy ones) or
under ``TYPE_CHECKING``: each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

# The floors, lowest first: a module may import its own floor and the floors below it, never one above.
FLOORS = (
    ("base", ("pipeline", "pipeline.errors", "pipeline.quiet", "pipeline.clock", "pipeline.pretrained",
              "pipeline.config")),
    ("data", ("pipeline.data",)),
    ("index", ("pipeline.index",)),
    ("model", ("pipeline.model",)),
    ("bundle", ("pipeline.bundle",)),
    ("train", ("pipeline.train",)),
    ("engines", ("pipeline.engines",)),
    ("search", ("pipeline.search",)),
    ("collection", ("pipeline.collection",)),
    ("fit and evaluate", ("pipeline.fit", "pipeline.evaluate")),
    ("report", ("pipeline.report",)),
    ("serve", ("pipeline.serve",)),
    ("cli", ("pipeline.cli",)),
)
MAX_MODULES_PER_FOLDER = 12
MAX_MODULE_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # "from package import module" imports the module; "from module import name" the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


def floor_of(name: str) -> int:
    """The floor of a module: its own, or its folder's (a folder's modules share its floor)."""
    for rank, (_, members) in enumerate(FLOORS):
        for member in members:
            folder = PACKAGE.parent.joinpath(*member.split("."))
            if name == member or (folder.is_dir() and member != "pipeline" and name.startswith(member + ".")):
                return rank
    raise AssertionError(f"{name} is on no floor of tests/test_imports.py's FLOORS (and docs/ARCHITECTURE.md)")


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def test_every_module_is_on_a_floor():
    for name in modules():
        if not name.endswith("__main__"):
            floor_of(name)


def test_imports_go_one_way():
    upward = [f"{name} ({FLOORS[floor_of(name)][0]}) imports {target} ({FLOORS[floor_of(target)][0]})"
              for name, targets in import_graph().items() for target in sorted(targets)
              if not name.endswith("__main__") and floor_of(target) > floor_of(name)]
    assert not upward, "imports against the one-way picture:\n" + "\n".join(upward)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected sets of two or more modules (Tarjan's algorithm)."""
    order, lowest, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        order[node] = lowest[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in order:
                visit(target)
                lowest[node] = min(lowest[node], lowest[target])
            elif target in on_stack:
                lowest[node] = min(lowest[node], order[target])
        if lowest[node] == order[node]:
            members = []
            while not members or members[-1] != node:
                members.append(stack.pop())
                on_stack.discard(members[-1])
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_circles_are_found():
    """The check above can fail: a circle of three and one of two are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(circles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_an_upward_import_is_found(tmp_path):
    """An import against the picture (the index importing the bundle) is seen, lazy or not."""
    source = tmp_path / "clustered.py"
    source.write_text("def f():\n    from ..bundle.artifacts import Bundle\n    from .kernels import scan\n")
    known = {"pipeline.bundle.artifacts", "pipeline.index.kernels"}
    assert imported_modules("pipeline.index.clustered", source, known) == known
    assert floor_of("pipeline.bundle.artifacts") > floor_of("pipeline.index.clustered")


@pytest.mark.parametrize("folder", sorted({path.parent for path in PACKAGE.rglob("*.py")}),
                         ids=lambda folder: str(folder.relative_to(PACKAGE.parent)))
def test_folders_and_modules_stay_small(folder):
    modules_here = [path for path in folder.glob("*.py") if path.name not in ("__init__.py", "__main__.py")]
    assert len(modules_here) <= MAX_MODULES_PER_FOLDER, f"{folder}: {len(modules_here)} modules side by side"
    for path in folder.glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{path}: {lines} lines (split it where it helps a reader)"
