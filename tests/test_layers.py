"""Package structure: one installed top-level package, layers that import one way, no module cycles."""
import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "cache", "extract", "heads", "pipeline")
# who may import whom (besides itself): pipeline -> heads -> cache, pipeline -> extract -> cache, and every package
# -> core (errors, worker environment, atomic files, numeric checks), which imports none of them
ALLOWED = {"core": set(), "cache": {"core"}, "extract": {"cache", "core"}, "heads": {"cache", "core"},
           "pipeline": {"cache", "extract", "heads", "core"}}


def _modules() -> dict:
    """omniart module name -> source path, for every module of the packages and the root."""
    modules = {"omniart": ROOT / "__init__.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = f"omniart.{package}" if path.name == "__init__.py" else f"omniart.{package}.{path.stem}"
            modules[name] = path
    return modules


def _imports(path: Path, modules: dict) -> set:
    """The omniart modules a file imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_runs_against_the_layers():
    wrong = sorted(f"{source} imports {target}" for source, targets in _graph().items() for target in targets
                   if _layer(source) and _layer(target) != _layer(source) and _layer(target) not in ALLOWED[_layer(source)])
    assert not wrong, "imports against pipeline -> heads -> cache, pipeline -> extract -> cache:\n" + "\n".join(wrong)


def test_no_module_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "module import cycles:\n" + "\n".join(cycles)


# Objects of another module handed over by parameter name, used by duck typing: a function taking one must annotate
# it with its class, imported from where it is defined (under TYPE_CHECKING at least), so that the import graph the
# tests above check sees the dependency that duck typing would hide.
DUCK_TYPED = {"store": ("omniart.cache", "FeatureStore")}


def _undeclared(source: str, module: str) -> list:
    """'function(parameter)' for each DUCK_TYPED parameter of `source` not annotated with its imported class."""
    tree = ast.parse(source)
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            if arg.arg not in DUCK_TYPED:
                continue
            package, name = DUCK_TYPED[arg.arg]
            annotation = ast.unparse(arg.annotation).strip("'\"") if arg.annotation is not None else ""
            declared = annotation == name and (name in defined or str(imported.get(name, "")).startswith(package))
            if not declared:
                found.append(f"{module}.{node.name}({arg.arg})")
    return found


def test_duck_typed_objects_of_another_module_are_declared():
    """A `store` parameter is annotated FeatureStore, imported from omniart.cache: heads' retrieval and the
    pipeline's readers import the store they use, openly."""
    undeclared = [entry for module, path in _modules().items() for entry in _undeclared(path.read_text(), module)]
    assert not undeclared, ("parameters used by duck typing without their class (annotate them and import the class, "
                            "under TYPE_CHECKING if only for the annotation):\n" + "\n".join(undeclared))
    # the check itself: an unannotated store, and one annotated with a class of the wrong origin, are caught
    assert _undeclared("def f(store, k):\n    return store.load(k)\n", "m") == ["m.f(store)"]
    assert _undeclared("from elsewhere import FeatureStore\ndef f(store: 'FeatureStore'): pass\n", "m") == ["m.f(store)"]
    assert not _undeclared("from omniart.cache import FeatureStore\ndef f(store: 'FeatureStore'): pass\n", "m")


def test_the_graph_sees_the_imports_it_checks():
    """The walker itself: a known function-level import and a known module-level one are found."""
    graph = _graph()
    assert "omniart.heads.data" in graph["omniart.heads.estimator"]  # inside MultiTaskHeads.fit
    assert "omniart.cache" in graph["omniart.heads.neighbors"]  # under TYPE_CHECKING
    assert "omniart.pipeline.config" in graph["omniart.pipeline.fitting"]  # at module level
    assert "omniart.core.errors" in graph["omniart.heads"]


def test_import_omniart_from_a_folder_with_generic_subfolders(tmp_path):
    """A user's own cache/, extract/, heads/ and pipeline/ folders (the README writes --out cache/...) do not
    shadow omniart's packages."""
    for name in PACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the user folder was imported')\n")
    code = ("import omniart; from omniart import FeatureStore, MultiTaskHeads, load_run; "
            "import omniart.cache, omniart.pipeline.cli; print(omniart.__version__, omniart.cache.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    version, path = done.stdout.split()
    assert version == omniart_version() and Path(path).resolve() == (ROOT / "cache" / "__init__.py").resolve()


def omniart_version() -> str:
    import omniart

    return omniart.__version__


def test_wheel_installs_exactly_one_top_level_package(tmp_path):
    """Built from the tracked files alone (as a fresh clone has them), the wheel holds omniart/ and its metadata."""
    pytest.importorskip("setuptools")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    source = tmp_path / "source"
    for name in tracked.stdout.split("\n"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    out.mkdir()
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    names = zipfile.ZipFile(out / done.stdout.split()[-1]).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"omniart", f"omniart-{omniart_version()}.dist-info"}, sorted(top)
    for module in ("omniart/__init__.py", "omniart/cache/store.py", "omniart/extract/runner.py",
                   "omniart/heads/estimator.py", "omniart/pipeline/cli.py"):
        assert module in names
    assert not [name for name in names if "/tests/" in name or "/benchmarks/" in name or name.endswith("setup.cfg")]


def test_every_package_shows_its_public_names_to_dir_and_they_resolve():
    """`dir(omniart.pipeline)` showed only `importlib`: nothing was discoverable from a prompt."""
    import importlib

    for name in ("omniart", "omniart.cache", "omniart.extract", "omniart.heads", "omniart.pipeline"):
        module = importlib.import_module(name)
        assert set(module.__all__) <= set(dir(module)), name
        for public in module.__all__:
            assert getattr(module, public) is not None, f"{name}.{public}"
