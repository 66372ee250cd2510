"""dvc.yaml lists exactly the code each stage runs, so `dvc status` tells the truth.

A stage runs ``python -m birdclef <command>``: every birdclef module that command imports,
directly or through other modules (module-level and function-level imports alike). Left out:
the command-line layer (cli.py) and the params schema (params.py), which pass settings through
(the settings themselves are the stages' params: a help text edit must not re-download and
re-precompute the real data), and progress bars.
"""

import ast
import re

import pytest
import yaml

from conftest import REPO

SOURCE = REPO / "src"
NOT_DEPENDENCIES = {"birdclef", "birdclef.__main__", "birdclef.cli", "birdclef.params", "birdclef.progress"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(module: str):
    path = SOURCE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """The birdclef modules ``tree`` imports; ``package`` resolves relative imports."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("birdclef")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if not module.startswith("birdclef"):
                continue
            found.add(module)
            # `from birdclef import layout` imports a module, not a name
            found |= {f"{module}.{alias.name}" for alias in node.names
                      if module_file(f"{module}.{alias.name}").is_file()}
    return found


def import_closure(roots: set[str]) -> set[str]:
    seen, pending = set(), list(roots)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        pending += imported_modules(ast.parse(path.read_text()), package)
    return seen


def dependency_path(module: str) -> str:
    """The dvc.yaml entry covering ``module``: its file, or its subpackage's folder."""
    relative = module_file(module).relative_to(REPO)
    return str(relative.parent if relative.parent != SOURCE.relative_to(REPO) / "birdclef" else relative)


def command_code(command: str) -> set[str]:
    cli = ast.parse(module_file("birdclef.cli").read_text())
    function = next(node for node in cli.body if isinstance(node, ast.FunctionDef) and node.name == command)
    modules = import_closure(imported_modules(function, "birdclef"))
    return {dependency_path(module) for module in modules - NOT_DEPENDENCIES}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_declares_exactly_the_code_it_runs(stage):
    body = STAGES[stage].get("do", STAGES[stage])
    command = re.search(r"-m birdclef (\w+)", body["cmd"]).group(1)
    declared = {dep for dep in body["deps"] if dep.startswith("src/")}
    needed = command_code(command)
    assert not needed - declared, f"{stage}: add to deps: {sorted(needed - declared)}"
    assert not declared - needed, f"{stage}: it does not run {sorted(declared - needed)}"


def test_the_closure_follows_imports_inside_functions():
    # train imports pseudo only inside train_fold; pseudo imports export only inside a function
    assert {"src/birdclef/pseudo.py", "src/birdclef/export.py"} <= command_code("train")
    assert "src/birdclef/model" in command_code("export")
    assert "src/birdclef/unpack.py" not in command_code("train")
