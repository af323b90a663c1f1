"""The launch package's imports form a tree: the ports module breaks the ssm/group/watch circle."""

from __future__ import annotations

import ast
from pathlib import Path

import trainer.launch

PACKAGE = Path(trainer.launch.__file__).parent


def launch_imports(path: Path) -> set[str]:
    """The launch modules ``path`` imports, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("trainer.launch."):
                found.add(node.module.split(".")[2])
            elif node.module == "trainer.launch":
                found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("trainer.launch.")}
    return found - {path.stem}


def test_launch_modules_import_each_other_without_a_circle():
    graph = {p.stem: launch_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert graph["ports"] == set()  # plain data and protocols only

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*path, module))

    for module in sorted(graph):
        visit(module, ())
