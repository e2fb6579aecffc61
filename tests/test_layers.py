"""comp's rooms lean only on rooms below them: the imports (module-level and inside functions) run one way."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "comp"

# Lowest first. A module may import modules of its own layer or below; within a layer the imports must not
# form a cycle.
LAYERS = [
    ["comp", "comp.errors", "comp.fileio", "comp.ui", "comp.registry"],
    ["comp.data", "comp.data.*", "comp.config", "comp.metrics", "comp.plots", "comp.blend"],
    ["comp.submission"],
    ["comp.models", "comp.weights"],
    ["comp.runs"],
    ["comp.inference", "comp.train", "comp.train.*"],
    ["comp.predict", "comp.soup", "comp.ensemble", "comp.ledger"],
    ["comp.estimate", "comp.selfcal", "comp.loocache", "comp.explain", "comp.report", "comp.sweep"],
    ["comp.cli", "comp.__main__"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or (n.endswith(".*") and module.startswith(n[:-1])):
                return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py; add it where it belongs")


def comp_imports(path: Path) -> set[str]:
    """Modules of comp that `path` imports anywhere (typing-only imports under TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "comp"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "comp":
                continue
            for a in node.names:  # `from . import runs` imports the module comp.runs
                sub = f"{mod}.{a.name}"
                found.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).is_file()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else mod)
    return found - {me}


GRAPH = {module_name(p): comp_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_up(module):
    up = sorted(m for m in GRAPH[module] if layer_of(m) > layer_of(module))
    assert not up, f"{module} (layer {layer_of(module)}) imports {up} from a higher layer"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join(path + [m])}"
        state[m] = 1
        for n in sorted(GRAPH.get(m, ())):
            visit(n, path + [m])
        state[m] = 2

    for m in sorted(GRAPH):
        visit(m, [])


def test_the_walk_sees_imports_inside_functions():
    assert "comp.predict" in GRAPH["comp.ensemble"]  # imported inside eval_probs
    assert "comp.models" in GRAPH["comp.runs"]
