"""The package layout's import rules, read from the source (AST), so a new module is checked without being
listed anywhere:

- grpo.algorithms: pure math, imports torch, the standard library and other algorithms modules only;
- rooms point one way: algorithms <- data <- runtime <- stages (a lower room never imports a higher one;
  imports under `if TYPE_CHECKING:` are type hints, not dependencies, and are skipped);
- a stage (a module of grpo.stages defining `train`) never imports another stage;
- DeepSpeed is imported only by grpo.runtime.engine, vLLM only by grpo.runtime.rollout.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "grpo"
ROOMS = ("algorithms", "data", "runtime", "stages")  # lowest first


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (functions included), resolved to absolute names;
    `from a import b` yields both `a` and `a.b` (b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
IMPORTS = {name: runtime_imports(path) for name, path in MODULES.items()}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "grpo" and parts[1] in ROOMS else None


def defines_train(path: Path) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "train" for n in ast.parse(path.read_text()).body)


STAGES = {name for name, path in MODULES.items() if name.startswith("grpo.stages.") and defines_train(path)}


def test_the_rooms_and_stages_are_found():
    # guards the test itself: a walk that found nothing would pass every rule below
    assert {room_of(m) for m in MODULES} >= set(ROOMS)
    assert STAGES == {"grpo.stages.sft", "grpo.stages.dpo", "grpo.stages.kto", "grpo.stages.grpo"}
    assert "torch" in IMPORTS["grpo.algorithms.advantages"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room_of(m) == "algorithms"))
def test_algorithms_import_torch_and_the_standard_library_only(module):
    for imported in IMPORTS[module]:
        top = imported.split(".")[0]
        allowed = top in ("torch", "typing", "__future__") or top in sys.stdlib_module_names or \
            imported.startswith("grpo.algorithms")
        assert allowed, f"{module} imports {imported}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room_of(m)))
def test_rooms_import_only_rooms_below_them(module):
    rank = ROOMS.index(room_of(module))
    for imported in IMPORTS[module]:
        target = room_of(imported)
        assert target is None or ROOMS.index(target) <= rank, f"{module} ({room_of(module)}) imports {imported}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_imports_another_stage(stage):
    others = STAGES - {stage}
    reached = {imported for imported in IMPORTS[stage] if imported in others}
    assert not reached, f"{stage} imports {sorted(reached)}"


def test_shared_stage_modules_import_no_stage():
    # context and evaluation are shared by the stages; only the pipeline (imported by no stage) runs them
    for module in MODULES:
        if module.startswith("grpo.stages.") and module not in STAGES:
            importers = {m for m in STAGES if module in IMPORTS[m]}
            if IMPORTS[module] & STAGES:
                assert not importers, f"{module} imports stages and is imported by {sorted(importers)}"


@pytest.mark.parametrize("library, owner", [("deepspeed", "grpo.runtime.engine"), ("vllm", "grpo.runtime.rollout")])
def test_one_module_imports_each_heavy_library(library, owner):
    importers = {m for m, imported in IMPORTS.items() if any(i.split(".")[0] == library for i in imported)}
    assert importers == {owner}
