"""The floor plan holds: which package may import which, no import cycles, project imports at the top of
files, plug-ins registered by package faces, no print in library code.

`python -m tests.test_layers` prints the shape in numbers (cycles, function-local project imports,
modules over 300 lines, the longest function).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.paths import REPO_ROOT

PROJECT = ("utils", "policies", "models")
GROUND = {"utils", "utils.errors", "utils.registry", "utils.config", "utils.io", "utils.cli", "utils.distributed",
          "utils.paths", "utils.seed"}
# package -> the project packages it may import besides itself and the ground floor (which imports only itself).
LAYERS = {
    "utils.sparsity": set(),
    "models": set(),
    "utils.data": set(),
    "policies": {"utils.sparsity"},
    "utils.checkpoints": {"utils.sparsity", "models"},
    "utils.onnx": set(),            # the CPU engines for ONNX files (one registry), the exporter, the sparse engine
    "utils.linear": {"policies", "utils.onnx"},   # the trainer's optimizer and LR functions (the sgd solver)
    "utils.detection": {"policies"},
    # the task plug-ins (which task a thing belongs to; its data, loop task, anchors, export check)
    "utils.tasks": {"models", "utils.data", "policies", "utils.detection"},
    "utils.runs": {"utils.sparsity", "models", "policies", "utils.data", "utils.checkpoints", "utils.linear",
                   "utils.detection", "utils.onnx", "utils.tasks"},   # onnx: the linear kind's --feature_backend
    "utils.deploy": {"utils.checkpoints", "policies", "utils.detection", "utils.onnx", "utils.tasks"},
    "utils.sparsify": {"utils.runs", "utils.deploy", "utils.checkpoints", "utils.data", "models", "policies",
                       "utils.onnx", "utils.tasks"},      # onnx: the summary's engines
    "utils.sparseml": {"utils.runs", "utils.sparsify", "utils.deploy", "models", "policies"},
    # the demo makes its detection data and exports its detector
    "utils.studies": {"utils.runs", "utils.checkpoints", "utils.analysis", "utils.data", "utils.deploy", "utils.tasks"},
    "utils.analysis": set(),
}
PRINT_ALLOWED = {"utils.errors"}   # exit_on_user_error: the one-line `error: ...` every entry point ends with
THIRD_PARTY_BANS = {"utils.analysis": ("torch", "torchvision")}   # the notebook loads without a model


@dataclass(frozen=True)
class Import:
    module: str          # the importing module
    target: str          # the project module imported (a face or a submodule)
    line: int
    local: bool          # inside a function
    top_of_file: bool    # before the first def/class/statement of the module


def library_files() -> dict[str, Path]:
    found = {}
    for root in PROJECT:
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def resolve(target: str, names: list[str], modules: set[str]) -> list[str]:
    """`from target import a, b`: the submodules a, b when they are modules, else target itself."""
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return subs + ([target] if len(subs) < len(names) else [])


def imports_of(name: str, path: Path, modules: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text())
    first_code = next((n.lineno for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr))),
                      None)
    found = []
    local_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = resolve(node.module, [a.name for a in node.names], modules)
        else:
            continue
        top = first_code is None or node.lineno < first_code
        for target in targets:
            if target.split(".")[0] in PROJECT:
                found.append(Import(name, target, node.lineno, id(node) in local_nodes, top))
    return found


def all_imports() -> list[Import]:
    files = library_files()
    return [imp for name, path in files.items() for imp in imports_of(name, path, set(files))]


def package_of(module: str) -> str:
    if module in GROUND:
        return "ground"
    return next((p for p in sorted(LAYERS, key=len, reverse=True) if module == p or module.startswith(p + ".")),
                module)


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.module, set()).add(imp.target)
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def forbidden(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        src, dst = package_of(imp.module), package_of(imp.target)
        if src == dst or dst == "ground":
            continue
        if src == "ground" or dst not in LAYERS.get(src, set()):
            bad.append(f"{imp.module}:{imp.line} imports {imp.target} ({src} may not import {dst})")
    return bad


def test_packages_import_only_the_layers_below_them():
    assert forbidden(all_imports()) == []


def test_no_import_cycles():
    assert cycles(all_imports()) == []


def test_project_modules_are_imported_at_the_top_of_files():
    """No function-local project imports, and no imports after code (plug-ins register in package faces)."""
    late = [f"{i.module}:{i.line} {i.target}" for i in all_imports() if i.local or not i.top_of_file]
    assert late == []


def test_banned_third_party_imports():
    files = library_files()
    bad = []
    for name, path in files.items():
        banned = next((v for k, v in THIRD_PARTY_BANS.items() if name == k or name.startswith(k + ".")), ())
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{name}:{node.lineno} {m}" for m in mods if m.split(".")[0] in banned]
    assert bad == []
    code = "import sys, utils.analysis; print(sorted(m for m in ('torch', 'models', 'policies') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", "importing utils.analysis pulls in " + loaded.stdout


def test_library_modules_do_not_print():
    """Printing is for entry points and `__main__` modules; library code logs or returns text."""
    bad = []
    for name, path in library_files().items():
        if name.endswith("__main__") or name in PRINT_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                bad.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Name) and node.id == "print" and isinstance(node.ctx, ast.Load):
                bad.append(f"{name}:{node.lineno} (print passed as a value)")
    assert sorted(set(bad)) == []


def test_the_check_catches_a_forbidden_import():
    """The contract test itself: an analysis module importing torch, or policies importing utils.runs, is caught."""
    files = library_files()
    fake = [Import("utils.analysis.tables", "models", 1, False, True),
            Import("policies.manager", "utils.runs.full", 1, False, True),
            Import("utils.errors", "utils.data", 1, False, True)]
    assert len(forbidden(fake)) == 3
    assert cycles([Import("a", "b", 1, False, True), Import("b", "a", 1, False, True)]) == [["a", "b"]]
    assert "utils.runs.full" in files and package_of("utils.runs.full") == "utils.runs"


def test_no_library_function_is_over_50_lines():
    """STYLE.md's limit, held: a function that grows past it gets split where it has stages."""
    over = [f"{name} ({lines})" for lines, name in function_lengths() if lines > 50]
    assert not over, over


def test_the_full_run_imports_its_stages_and_names_no_policy():
    """utils/runs/full.py reads as the run's stages: at most 12 project imports, none from policies (the policies
    a run uses are built and queried in utils/runs/training.py)."""
    tree = ast.parse((REPO_ROOT / "utils" / "runs" / "full.py").read_text())
    project = [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
               and node.module.split(".")[0] in PROJECT]
    assert len(project) <= 12, project
    assert not [m for m in project if m.split(".")[0] == "policies"], project


def function_lengths() -> list[tuple[int, str]]:
    out = []
    for name, path in library_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(out, reverse=True)


def main() -> None:
    imports = all_imports()
    files = library_files()
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in files.items()), reverse=True)
    longest = function_lengths()[:5]
    print(f"library modules: {len(files)}")
    print(f"import cycles: {len(cycles(imports))}")
    print(f"forbidden imports: {len(forbidden(imports))}")
    print(f"function-local project imports in the library: {sum(i.local for i in imports)}")
    over = [f"{m} ({n})" for n, m in sizes if n > 300]
    print(f"modules over 300 lines: {len(over)} {over}")
    print(f"largest module: {sizes[0][1]} ({sizes[0][0]} lines)")
    print("longest functions: " + ", ".join(f"{n} ({k} lines)" for k, n in longest))


if __name__ == "__main__":
    main()
