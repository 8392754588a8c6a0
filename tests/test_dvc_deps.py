"""Every DVC stage lists the lggseg code it runs among its deps, so editing that code makes the stage stale.

The imports are walked statically (`ast`, nothing is imported): from the stage's pipeline function (the
imports in its body, the module-level imports of pipeline.py that it names, the pipeline functions it
calls), then through every lggseg module reached, all of its imports included. Every module file reached
must lie under one of the stage's deps (a file or a folder). Not checked: the entry that every stage
shares (lggseg/__init__.py, cli.py, pipeline.py) and package __init__.py files that hold only a docstring."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, committed_params_text
from lggseg.cli import STAGES

SRC = REPO / "src"
PIPELINE = SRC / "lggseg" / "pipeline.py"
PACKAGE = "lggseg"


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages by name, a matrix stage expanded into `<name>@<value>` (values from the committed
    params.yaml, as DVC would take them from params.yaml)."""
    params = yaml.safe_load(committed_params_text())
    stages = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        if "matrix" not in stage:
            stages[name] = stage
            continue
        axes = {key: _interpolate_list(values, params) for key, values in stage["matrix"].items()}
        for combination in itertools.product(*axes.values()):
            item = dict(zip(axes, combination))
            stages[f"{name}@{'-'.join(map(str, combination))}"] = {
                **stage, "deps": [_interpolate_item(dep, item) for dep in stage.get("deps", [])]}
    return stages


def _interpolate_list(values, params: dict) -> list:
    if isinstance(values, list):
        return values
    match = re.fullmatch(r"\$\{([\w.]+)\}", values)
    assert match, f"matrix values {values!r}: a list or ${{params.key}}"
    for key in match[1].split("."):
        params = params[key]
    return list(params)


def _interpolate_item(dep: str, item: dict) -> str:
    return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m[1]]), dep)


def stage_command(stage: dict) -> str:
    """The `lggseg` command a stage runs: its cmd is `python stages/<name>.py ...`, which calls
    lggseg.cli.main(["<command>", ...])."""
    script = REPO / stage["cmd"].split()[1]
    for node in ast.walk(ast.parse(script.read_text())):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args
                and isinstance(node.args[0], ast.List) and isinstance(node.args[0].elts[0], ast.Constant)):
            return node.args[0].elts[0].value
    raise AssertionError(f"{script} calls no lggseg.cli.main([\"<command>\", ...])")


def pipeline_function(command: str) -> str:
    """cli runs a stage command as lggseg.pipeline.<command with - as _>."""
    assert command in STAGES, f"`lggseg {command}` is not a stage command of lggseg.cli ({', '.join(STAGES)})"
    return command.replace("-", "_")


def module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _package_of(module: str) -> str:
    file = module_file(module)
    return module if file is not None and file.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(statement: ast.Import | ast.ImportFrom, importer: str, names: set[str] | None = None) -> set[str]:
    """The lggseg modules an import statement in module `importer` loads, parent packages included;
    `names`: only those of the names it binds."""
    if isinstance(statement, ast.Import):
        targets = [alias.name for alias in statement.names
                   if names is None or (alias.asname or alias.name.split(".")[0]) in names]
    else:
        base = statement.module or ""
        if statement.level:
            package = _package_of(importer).split(".")
            base = ".".join([*package[:len(package) - statement.level + 1], *([base] if base else [])])
        chosen = [alias.name for alias in statement.names if names is None or (alias.asname or alias.name) in names]
        targets = [base, *(f"{base}.{name}" for name in chosen)] if chosen else []
    modules = set()
    for target in targets:
        parts = target.split(".")
        if parts[0] != PACKAGE:
            continue
        modules.update(prefix for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                       if module_file(prefix) is not None)
    return modules


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def entry_modules(function: str) -> set[str]:
    """The lggseg modules that pipeline.<function> loads or names, and those of the pipeline functions it calls."""
    tree = ast.parse(PIPELINE.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    module_imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    assert function in functions, f"lggseg.pipeline has no function {function}"
    modules: set[str] = set()
    todo, seen = [function], set()
    while todo:
        body = functions[todo.pop()]
        named = {node.id for node in ast.walk(body) if isinstance(node, ast.Name)}
        for statement in _imports(body):
            modules |= imported_modules(statement, "lggseg.pipeline")
        for statement in module_imports:
            modules |= imported_modules(statement, "lggseg.pipeline", named)
        for name in named & functions.keys() - seen:
            seen.add(name)
            todo.append(name)
    return modules


def reached_modules(function: str) -> set[str]:
    """Every lggseg module pipeline.<function> can run: its entry modules and, transitively, what they import."""
    reached, todo = set(), list(entry_modules(function))
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        tree = ast.parse(module_file(module).read_text())
        todo.extend(m for statement in _imports(tree) for m in imported_modules(statement, module))
    return reached


def _is_checked(file: Path) -> bool:
    if file.parent == SRC / PACKAGE:
        return False  # lggseg/__init__.py, cli.py, pipeline.py: the entry of every stage
    if file.name == "__init__.py":
        body = ast.parse(file.read_text()).body
        return not (len(body) <= 1 and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body))
    return True


def modules_outside_deps(function: str, deps: list[str]) -> list[str]:
    """The lggseg modules pipeline.<function> reaches whose files no dep (file or folder) covers."""
    dep_paths = [(REPO / dep).resolve() for dep in deps]
    return sorted(module for module in reached_modules(function)
                  if _is_checked(file := module_file(module))
                  and not any(file == dep or dep in file.parents for dep in dep_paths))


STAGE_NAMES = sorted(dvc_stages())


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_deps_cover_the_code_it_runs(name):
    stage = dvc_stages()[name]
    function = pipeline_function(stage_command(stage))
    missing = modules_outside_deps(function, stage.get("deps", []))
    assert not missing, (f"dvc.yaml stage {name} runs lggseg.pipeline.{function}, which reaches {', '.join(missing)}: "
                         "add their sub-package folder (src/lggseg/<package>) to the stage's deps")


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_stage_code_deps_exist(name):
    code_deps = [dep for dep in dvc_stages()[name].get("deps", []) if dep.startswith("src/")]
    assert code_deps and all((REPO / dep).exists() for dep in code_deps), code_deps


def test_every_stage_command_runs_as_a_dvc_stage_but_check_champion():
    commands = {stage_command(stage) for stage in dvc_stages().values()}
    assert commands == set(STAGES) - {"check-champion"}  # check-champion is CI's, not a stage


def test_a_missing_dep_is_reported_by_module():
    train = next(stage for name, stage in dvc_stages().items() if name.startswith("train@"))
    deps = [dep for dep in train["deps"] if dep.rstrip("/") != "src/lggseg/metrics"]
    assert "lggseg.metrics.segmentation" in modules_outside_deps("train", deps)
    assert "lggseg.metrics.segmentation" not in modules_outside_deps("train", train["deps"])


def test_the_walker_follows_function_level_and_relative_imports():
    # pipeline.train imports the training loop inside its body; the loop reaches the network factory
    assert {"lggseg.training.loop", "lggseg.model.networks"} <= reached_modules("train")
    # names from pipeline.py's module-level imports count only where the function uses them
    assert "lggseg.data.acquire" in reached_modules("download")
    assert "lggseg.data.acquire" not in reached_modules("compare")
    statement = ast.parse("from .segmentation import dice\nfrom . import x").body
    assert imported_modules(statement[0], "lggseg.metrics.detection") == {
        "lggseg", "lggseg.metrics", "lggseg.metrics.segmentation"}
    assert imported_modules(statement[1], "lggseg.metrics") == {"lggseg", "lggseg.metrics"}
