"""The layering the design promises, read from the code: the core imports no Dagster, there is no
import cycle, Dagster's private API stays in one module, and nothing installs under a generic
top-level name."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Installed names of the folders (pyproject package-dir): assets/ is distill_dag.assets, ...
LAYER_FOLDERS = {"assets": "distill_dag.assets", "resources": "distill_dag.resources",
                 "orchestration": "distill_dag.orchestration"}
DAGSTER_LAYER = tuple(LAYER_FOLDERS.values())
# The code location's entry point re-exports the definitions built in orchestration/.
CORE_EXCEPTION = "distill_dag/definitions.py"
PRIVATE_DAGSTER_MODULE = "orchestration/dagster_internals.py"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in LAYER_FOLDERS:
        parts[0:1] = LAYER_FOLDERS[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    folders = ["distill_dag", *LAYER_FOLDERS]
    return {_module_name(p): p for folder in folders for p in (ROOT / folder).rglob("*.py")}


def _imports(path: Path, module: str) -> set[str]:
    """Every module name imported anywhere in the file (lazy imports inside functions too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _project_modules()
    return {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a cycle's
    members. A package importing its own submodules is not counted (pkg -> pkg.x -> pkg)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            leaves = [c for c in component
                      if not any(o != c and o.startswith(c + ".") for o in component)]
            if len(component) > 1 and len(leaves) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_imports_neither_dagster_nor_the_dagster_layer():
    offenders = {}
    for module, path in _project_modules().items():
        rel = str(path.relative_to(ROOT))
        if not rel.startswith("distill_dag/") or rel == CORE_EXCEPTION:
            continue
        bad = sorted(i for i in _imports(path, module)
                     if i.split(".")[0] == "dagster" or i.startswith("dagster_")
                     or any(i == x or i.startswith(x + ".") for x in DAGSTER_LAYER)
                     or i.split(".")[0] in LAYER_FOLDERS)
        if bad:
            offenders[rel] = bad
    assert not offenders, f"core modules importing Dagster or the Dagster layer: {offenders}"


def test_the_entry_point_only_reexports_the_definitions():
    tree = ast.parse((ROOT / CORE_EXCEPTION).read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]


def test_no_import_cycles_among_the_projects_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "pkg": {"pkg.x"}, "pkg.x": {"pkg"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_dagster_private_api_is_used_in_one_module_only():
    users = []
    for module, path in _project_modules().items():
        if any(i.startswith(("dagster._", "dagster._core")) for i in _imports(path, module)):
            users.append(str(path.relative_to(ROOT)))
    assert users == [PRIVATE_DAGSTER_MODULE]


def test_installed_packages_live_under_the_distill_dag_namespace():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools["packages"]
    assert all(p == "distill_dag" or p.startswith("distill_dag.") for p in packages), packages
    # Every package folder is listed, so a wheel carries all of them.
    for installed, folder in [("distill_dag", "distill_dag"),
                              *[(name, f) for f, name in LAYER_FOLDERS.items()]]:
        assert setuptools["package-dir"][installed] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT / folder).parts
            assert ".".join([installed, *sub]) in packages, f"{init.parent} is not packaged"


def test_the_dagster_layer_is_importable_under_its_installed_name():
    import distill_dag.assets
    import distill_dag.orchestration.stale
    import distill_dag.resources

    assert Path(distill_dag.assets.__file__).parent == ROOT / "assets"
    assert Path(distill_dag.resources.__file__).parent == ROOT / "resources"
    assert Path(distill_dag.orchestration.stale.__file__).parent == ROOT / "orchestration"
