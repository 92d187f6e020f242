"""The code's floors: commands on top of a library that never imports them, and no import circles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "colorjob"
COMMAND_FLOOR = ("colorjob.cli", "colorjob.commands")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (the shims that let ``python -m colorjob.X`` run the command)."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(
            isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators
        )
    )


def imports(path: Path, modules: set[str]) -> set[str]:
    """The colorjob modules a file imports (at any depth: lazy imports count), except inside its
    ``__main__`` guard."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(subs)
            if len(subs) < len(node.names):  # names defined in the module itself
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    files = [p for p in ROOT.rglob("*.py") if p.name != "__main__.py"]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first walk (enough to show that there is none)."""
    found, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = "done"

    for n in sorted(g):
        if n not in state:
            walk(n, [n])
    return found


def test_the_walker_sees_lazy_imports_and_finds_a_planted_cycle():
    """Positive control: the graph has the lazy imports, and a cycle put in is found."""
    g = graph()
    assert "colorjob.distributed" in g["colorjob.tune"]  # imported inside a function
    assert "colorjob.train" in g["colorjob.trial"]
    planted = {k: set(v) for k, v in g.items()}
    planted["colorjob.conditions"].add("colorjob.data")  # data imports conditions
    assert any({"colorjob.conditions", "colorjob.data"} <= set(c) for c in cycles(planted))


def test_no_import_circles_in_colorjob():
    assert cycles(graph()) == []


def test_no_library_module_imports_the_command_floor():
    bad = {
        m: sorted(d for d in deps if d.startswith(COMMAND_FLOOR))
        for m, deps in graph().items()
        if not m.startswith(COMMAND_FLOOR)
    }
    assert {m: d for m, d in bad.items() if d} == {}


def module_path(name: str) -> Path:
    """``colorjob.x.y`` -> its file (``x/y.py``, or ``x/y/__init__.py`` for a package)."""
    base = ROOT.parent / name.replace(".", "/")
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def importers_of(package: str, modules: list[str] | None = None) -> list[str]:
    """The colorjob modules (all, or those named) that import ``package`` anywhere in them."""
    paths = list(ROOT.rglob("*.py")) if modules is None else [module_path(m) for m in modules]
    users = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []  # fmt: skip
            if any(n == package or n.startswith(package + ".") for n in names):
                users.append(module_name(path))
                break
    return sorted(users)


def test_data_models_and_the_training_loop_import_no_ray():
    """Ray lives at the edges (tune, distributed, batch executors, cluster, jobs/)."""
    ray_free = ["colorjob.data", "colorjob.models", "colorjob.train", "colorjob.trial", "colorjob.inference",
                "colorjob.conditions", "colorjob.runfolder", "colorjob.checkpoint", "colorjob.evaluate",
                "colorjob.batch.stages", "colorjob.batch.plan", "colorjob.batch.ledger"]  # fmt: skip
    assert importers_of("ray", ray_free) == []
    assert "colorjob.tune" in importers_of("ray")  # positive control: the walk sees Ray's users


def test_no_module_imports_torchvision():
    """Its import pulls in torch._dynamo and sympy (1.3 s of every process that trains: each
    trial, Ray Train worker and command); the sample grid is drawn by ``plots.tile``."""
    assert importers_of("torchvision") == []
    assert importers_of("torch") != []  # the walk sees third-party imports
