"""The architecture's rules, checked on the source: no import cycles in components/, modalities never import a stage,
no stage branches on the modality, and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("prepare", "validate", "augment", "train", "evaluate", "package", "ingest")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 80


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import sits under `if TYPE_CHECKING:` (it never runs, so it makes no cycle)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imported(node: ast.Import | ast.ImportFrom, package: str, modules: set[str]) -> Iterator[str]:
    """The modules of `package` an import statement loads (`from a import b` loads a.b when b is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.module is None or node.level:
        names = []  # relative imports: the project writes none
    else:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]  # `import a.b.c` of a function or class: the module that holds it
        if name and name.split(".")[0] == package:
            yield name


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, at module level or inside functions (not TYPE_CHECKING)."""
    files = {".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
             for path in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        graph[module] = {target for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         and not _type_checking_only(node, parents)
                         for target in _imported(node, package, set(files)) if target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (each is at least one import cycle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_detector_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (package / "e.py").write_text("from pkg.a import thing\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b", "pkg.sub"} and graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_components_have_no_import_cycle() -> None:
    found = cycles(import_graph(ROOT, "components"))
    assert not found, "import cycles in components/ (each group imports itself round): " + "; ".join(
        " <-> ".join(group) for group in found)


def test_a_modality_package_never_imports_a_stage() -> None:
    graph = import_graph(ROOT, "components")
    stages = {f"components.{stage}" for stage in STAGES}
    offending = {module: sorted(targets & stages) for module, targets in graph.items()
                 if module.startswith("components.modalities") and targets & stages}
    assert not offending, offending


def test_the_stages_know_no_modality_by_name() -> None:
    """Outside the modality packages (and the registry, their index) nothing asks which modality it has."""
    pattern = re.compile(r"holds_images|isinstance\(.*ImagePredictor|modality ==|modality\.name ==|"
                         r"components\.modalities\.(text|image|audio)")
    found = []
    for folder in ("components", "serving", "flows", "tuneline"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("components/modalities/"):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                match = pattern.search(line)
                if match:
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("folder", ["components", "serving", "flows", "tuneline"])
def test_modules_and_functions_stay_short(folder: str) -> None:
    long_modules, long_functions = [], []
    for path in sorted((ROOT / folder).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long_modules and not long_functions, long_modules + long_functions


def _dotted_params(stages: dict, params: dict) -> Iterator[tuple[str, str]]:
    """(stage, key) for each dotted param a stage of dvc.yaml names, `${...}` resolved from `params`."""
    for stage, spec in stages.items():
        for entry in spec.get("params", []):
            for key in entry if isinstance(entry, dict) else [entry]:
                yield stage, re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(params, m.group(1))), key)


def _lookup(params: dict, dotted: str) -> object:
    value: object = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return KeyError(dotted)
        value = value[part]
    return value


@pytest.mark.parametrize("shipped", ["params.yaml", "images/params.yaml", "audio/params.yaml"])
def test_every_param_dvc_yaml_names_is_in_each_shipped_params_file(shipped: str) -> None:
    """`dvc repro` refuses a stage whose params are missing from params.yaml (images/ shares the project's dvc.yaml)."""
    import yaml

    params = yaml.safe_load((ROOT / shipped).read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = [f"{stage}: {key}" for stage, key in _dotted_params(stages, params)
               if isinstance(_lookup(params, key), KeyError)]
    assert not missing, f"{shipped} lacks params dvc.yaml names: {missing}"
