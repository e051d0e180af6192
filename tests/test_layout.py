"""The harness's layering, checked on the source: stages are thin entry points that never import
one another, the library never imports a stage, every DVC stage declares the project code it
imports, and the report stage loads no model library."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("experiments", "s4m", "baselines")
STAGES = sorted(p.stem for p in (REPO / "experiments/stages").glob("*.py") if p.stem != "__init__")


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports anywhere (module level or inside functions)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.removesuffix(".__init__")
    else:
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PROJECT_PACKAGES and _module_file(n)}
    return found


def _closure(module: str) -> set[Path]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(_module_file(name)))
    return {path for path in map(_module_file, seen) if not _docstring_only(path)}


def _docstring_only(path: Path) -> bool:
    """A package marker with no code (its edits cannot change what a stage computes)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
               for node in body)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage: str) -> None:
    imported = _imports(REPO / "experiments/stages" / f"{stage}.py")
    assert not {m for m in imported if m.startswith("experiments.stages.")}, imported


def test_the_library_never_imports_a_stage() -> None:
    for path in (REPO / "experiments").rglob("*.py"):
        if "stages" not in path.relative_to(REPO).parts:
            imported = _imports(path)
            assert not any(m.startswith("experiments.stages") for m in imported), (path, imported)


def test_every_dvc_stage_declares_the_project_code_it_imports() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = re.search(r"python -m (\S+)", stage["cmd"]).group(1)
        deps = [REPO / d for d in stage["deps"]]
        for path in _closure(module):
            declared = any(path == d or d in path.parents for d in deps)
            assert declared, f"dvc.yaml stage {name}: imports {path.relative_to(REPO)}, not in deps"


def test_report_stage_loads_no_model_library() -> None:
    code = ("import sys, experiments.stages.report; "
            "print(sorted(m for m in ('torch', 'fvcore', 'ptflops', 'asteroid', 'speechbrain') "
            "if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "[]", run.stdout


def test_speechbrain_loads_only_when_sepformer_is_built() -> None:
    code = ("import sys; from experiments.registry import build_model; build_model('convtasnet'); "
            "print('speechbrain' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert run.stdout.strip() == "False", run.stdout
