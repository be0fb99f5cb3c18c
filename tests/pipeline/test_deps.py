"""dvc.yaml's code deps are exactly the code each stage runs, so a code change reruns what it
affects and nothing else.

For every stage the test reads the script from its `cmd`, collects every import in it (anywhere
in the file: a lazy import inside a function runs too), follows them transitively through the
project's own modules (src/shrinkflow/ and siblings in stages/) and compares that set of files
with the stage's `.py` deps in dvc.yaml. It fails naming the stage and each missing or unused file.

Why it matters, measured on the drift it was written for: with `src/shrinkflow/data.py` missing
from every stage, a change to `load_prepared` reran nothing; with `models.py` missing from
evaluate, a change to `count_macs` left evaluate's recorded MACs stale.

The package's `__init__.py` files (the top one and each subpackage's) run for every stage that
imports a module below them, but listing them would make a version bump retrain every model. So
the rule is: they are not listed, and each must hold no code (a docstring and dunder constants
only), which `test_package_inits_hold_no_code` enforces for every one of them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from pipeline_repo import pipeline_stages

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE_INITS = sorted((SRC / "shrinkflow").rglob("__init__.py"))


def dep_paths(stage: dict[str, Any]) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else str(d) for d in stage.get("deps", [])]


def script_of(cmd: str | list[str]) -> Path:
    """The project script a stage runs: the first `*.py` word of its command (also under
    torchrun), or the module of `python -m pkg.mod`."""
    text = " ".join(cmd) if isinstance(cmd, list) else cmd
    found = re.search(r"(?:^|\s)([^\s;&|]+\.py)(?=\s|$)", text)
    if found:
        return (ROOT / found.group(1)).resolve()
    module = re.search(r"(?:^|\s)-m\s+([\w.]+)", text)
    path = module_file(module.group(1), [SRC]) if module else None
    assert path, f"no project script or module in cmd {text!r}"
    return path.resolve()


# --- the code a script runs ---------------------------------------------------------------------


def module_file(dotted: str, search: list[Path]) -> Path | None:
    """The project file a module name loads, or None for the standard library and third parties."""
    parts = dotted.split(".")
    for base in search:
        candidate = base.joinpath(*parts)
        if candidate.with_suffix(".py").is_file():
            return candidate.with_suffix(".py")
        if (candidate / "__init__.py").is_file():
            return candidate / "__init__.py"
    return None


def imported_names(path: Path, package: str) -> tuple[set[str], set[str]]:
    """The module names the file imports anywhere (top level, functions, TYPE_CHECKING), and its
    dotted string constants, which may name a module it launches (`python -m shrinkflow.x`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    strings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            # `from pkg import mod` loads pkg/mod.py when mod is a module, not an attribute
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", node.value):
                strings.add(node.value)
    return names, strings


def code_files(script: Path, src: Path = SRC) -> set[Path]:
    """The project files Python executes for `python script`: the script, and every module of
    `src` or of the script's folder it imports, directly or through other modules."""
    search = [script.parent, src]  # `python stages/x.py` puts stages/ first on sys.path
    seen: set[Path] = set()
    todo = [script.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = ""
        if path.is_relative_to(src.resolve()):
            parts = path.relative_to(src.resolve()).parent.parts
            package = ".".join(parts)
        names, strings = imported_names(path, package)
        # a string counts only when it names a package module ("distill.T" is a params key)
        launched = {s for s in strings if module_file(s, [src]) is not None}
        for name in names | launched:
            parts = name.split(".")
            # importing a.b.c runs a/__init__.py, a/b/__init__.py and a/b/c.py
            for i in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:i]), search)
                if found is not None:
                    todo.append(found.resolve())
    return seen


def is_code_dep(dep: str) -> bool:
    path = ROOT / dep
    return dep.endswith(".py") or (path.is_dir() and path.resolve().is_relative_to(SRC))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- the tests ----------------------------------------------------------------------------------


STAGES = pipeline_stages(ROOT)


def code_dep_problems(name: str, stage: dict[str, Any]) -> list[str]:
    """One line per file the stage runs but does not list, or lists but does not run."""
    runs = code_files(script_of(stage["cmd"])) - {p.resolve() for p in PACKAGE_INITS}
    needed = {rel(p) for p in runs}
    listed = {d.rstrip("/") for d in dep_paths(stage) if is_code_dep(d)}
    problems = [f"dvc.yaml stage '{name}' misses dep {f} (the stage imports it)"
                for f in sorted(needed - listed)]
    problems += [f"dvc.yaml stage '{name}' lists dep {f}, which the stage never imports"
                 for f in sorted(listed - needed)]
    return problems


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_lists_exactly_the_code_it_runs(name):
    problems = code_dep_problems(name, STAGES[name])
    assert not problems, "\n".join(problems)


def test_drift_is_reported_both_ways():
    """A dropped dep and a dep the stage never imports each give a line naming stage and file."""
    name = "report" if "report" in STAGES else sorted(STAGES)[0]
    stage = STAGES[name]
    script = script_of(stage["cmd"])
    unused = next(p for p in sorted((SRC / "shrinkflow").rglob("*.py"))
                  if p.name != "__init__.py" and p.resolve() not in code_files(script))
    drifted = {**stage, "deps": [d for d in dep_paths(stage) if ROOT / d != script]
               + [rel(unused)]}
    assert code_dep_problems(name, drifted) == [
        f"dvc.yaml stage '{name}' misses dep {rel(script)} (the stage imports it)",
        f"dvc.yaml stage '{name}' lists dep {rel(unused)}, which the stage never imports",
    ]


def test_imports_are_followed_through_functions_and_packages(tmp_path):
    """The walker itself, on a made-up package: lazy, relative and `from pkg import mod`
    imports are followed transitively; the standard library and attributes are not files."""
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import json\n\ndef f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from pkg import c\nfrom pkg.d import CONSTANT\n")
    (pkg / "c.py").write_text("")
    (pkg / "d.py").write_text("CONSTANT = 1\n")
    (pkg / "unused.py").write_text("")
    (pkg / "worker.py").write_text("")
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "helper.py").write_text("ARGS = ['-m', 'pkg.worker']\n")
    script = stages / "stage.py"
    script.write_text("import os\nimport helper\n\ndef main():\n    import pkg.a\n")
    found = {p.relative_to(tmp_path.resolve()).as_posix()
             for p in code_files(script, tmp_path / "src")}
    assert found == {"stages/stage.py", "stages/helper.py", "src/pkg/__init__.py",
                     "src/pkg/a.py", "src/pkg/b.py", "src/pkg/c.py", "src/pkg/d.py",
                     "src/pkg/worker.py"}


def test_templated_stages_resolve_like_dvc():
    names = set(STAGES)
    assert "prepare" in names and any(n.startswith("evaluate@") for n in names)
    assert all("${" not in str(stage.get("cmd")) for stage in STAGES.values())


@pytest.mark.parametrize("init", PACKAGE_INITS, ids=lambda p: rel(p))
def test_package_inits_hold_no_code(init):
    """No stage lists an __init__.py (see the module docstring), so none may hold anything a stage
    could depend on: a docstring and dunder constants (`__version__`) only."""
    tree = ast.parse(init.read_text())
    for node in tree.body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        dunder = (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                  and all(isinstance(t, ast.Name) and t.id.startswith("__") for t in node.targets))
        assert docstring or dunder, (
            f"{rel(init)} line {node.lineno} runs code for every stage below it: move it into a "
            "module, or list that __init__.py in those stages' deps and change this test")


def test_every_subpackage_has_an_init():
    """A folder of modules without __init__.py would be a namespace package: still importable,
    but the walker above (and a reader) would not see it as part of the package."""
    for folder in (SRC / "shrinkflow").rglob("*"):
        if folder.is_dir() and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{rel(folder)} has no __init__.py"


def test_script_is_found_under_launchers_and_as_a_module():
    assert script_of("torchrun --nproc_per_node 2 stages/x.py ${item}") == ROOT / "stages/x.py"
    errors = SRC / "shrinkflow/core/errors.py"
    assert script_of(["python", "-m", "shrinkflow.core.errors"]) == errors
    with pytest.raises(AssertionError, match="no project script"):
        script_of("dvc exp show")


def test_no_import_circle():
    """No module of the package imports itself back through others, lazily or not: a circle
    (as `bench` <-> `bench_worker` once were) means neither module can be read, tested or
    cached on its own."""
    modules = {p.resolve() for p in (SRC / "shrinkflow").rglob("*.py") if p.name != "__init__.py"}
    edges: dict[Path, set[Path]] = {}
    for path in modules:
        package = ".".join(path.relative_to(SRC.resolve()).parent.parts)
        names, _ = imported_names(path, package)
        found = {module_file(n, [SRC]) for n in names}
        edges[path] = {f.resolve() for f in found if f is not None} & modules
    done: set[Path] = set()

    def visit(node: Path, trail: list[Path]) -> None:
        if node in trail:
            circle = trail[trail.index(node):] + [node]
            raise AssertionError("import circle: " + " -> ".join(rel(p) for p in circle))
        if node in done:
            return
        for nxt in sorted(edges[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    for module in sorted(modules):
        visit(module, [])
