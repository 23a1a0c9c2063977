"""The shape of the code, checked: each subpackage imports only the subpackages listed before it,
and no modules import each other in a circle; only the scripts import cli.py; the scripts hold no
detector names and read like a table of contents; the 0.4 module paths still work, with a warning."""
from __future__ import annotations

import ast
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT
from ddpm_ood._moved import MOVED
from ddpm_ood.detectors import COMBINATIONS, DETECTORS

PACKAGE = ROOT / "src" / "ddpm_ood"

# The subpackages (and top-level modules), lowest first: each imports only those before it and itself.
PACKAGES = ["_moved", "utils", "data", "metrics", "diffusion", "runs", "models", "training", "detectors", "evaluation",
            "api", "cli"]
SCRIPTS = ("train.py", "reconstruct.py", "ood_detection.py", "get_datasets.py", "train_vqvae.py")


def src_imports(path) -> set[str]:
    """Every package module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm_ood"):
            if node.module == "ddpm_ood":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module[len("ddpm_ood."):])
        elif isinstance(node, ast.Import):
            found.update(a.name[len("ddpm_ood."):] for a in node.names if a.name.startswith("ddpm_ood."))
    return found


def module_name(path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"]
    return ".".join(parts)


def modules() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports."""
    return {module_name(p): src_imports(p) for p in PACKAGE.rglob("*.py") if module_name(p)}


def test_every_module_is_in_a_listed_subpackage():
    unplaced = sorted(m for m in modules() if m.split(".")[0] not in PACKAGES)
    assert not unplaced, f"place {unplaced} in a subpackage listed in PACKAGES (or list a new one)"


def test_every_subpackage_imports_only_those_below_it():
    for name, imported in modules().items():
        rank = PACKAGES.index(name.split(".")[0])
        upward = sorted(m for m in imported if PACKAGES.index(m.split(".")[0]) > rank)
        assert not upward, f"ddpm_ood.{name} imports {upward}, which are not below its subpackage"


def test_no_modules_import_each_other_in_a_circle():
    graph = modules()
    done, path = set(), []

    def visit(name):
        if name in path:
            pytest.fail("an import circle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done or name not in graph:
            return
        path.append(name)
        for imported in graph[name] - {name}:
            if not name.startswith(imported + "."):  # a module may use its own package's __init__
                visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_only_the_scripts_import_cli():
    importers = [module_name(p) for p in (PACKAGE).rglob("*.py") if "cli" in src_imports(p)]
    assert importers == []
    assert all("cli" in src_imports(ROOT / script) for script in SCRIPTS)


def test_the_scripts_hold_no_detector_names():
    names = {*DETECTORS, *COMBINATIONS, "combo-cheap"}
    for script in SCRIPTS:
        strings = {node.value for node in ast.walk(ast.parse((ROOT / script).read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not strings & names, f"{script} names detectors {strings & names}"


@pytest.mark.parametrize("script", ["reconstruct.py", "ood_detection.py"])
def test_the_scoring_scripts_are_parse_args_and_a_short_main(script):
    tree = ast.parse((ROOT / script).read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert set(functions) == {"parse_args", "main"}
    assert len((ROOT / script).read_text().splitlines()) <= 155
    assert functions["main"].end_lineno - functions["main"].lineno < 60


@pytest.mark.slow
def test_the_old_src_imports_work_with_a_deprecation_warning():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "try:\n    import src.detector\nexcept DeprecationWarning as err:\n    print('warned:', err)\n"
            "warnings.simplefilter('ignore')\nimport src.detector, src.api, src.detectors.base, ddpm_ood.api\n"
            "assert src.detector.OODDetector is src.api.OODDetector is ddpm_ood.api.OODDetector\n"
            "assert src.detectors.base.Detector is __import__('ddpm_ood.detectors.base').detectors.base.Detector")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warned: src.detector is deprecated since 0.5.0" in result.stdout
    assert "import ddpm_ood.api" in result.stdout


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_module_path_is_its_new_module_with_a_warning(old):
    """``ddpm_ood.<old>`` (or, where a subpackage took the name, its attributes) and ``src.<old>``."""
    import importlib

    new = importlib.import_module("ddpm_ood." + MOVED[old])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if old == MOVED[old].split(".")[0]:  # ddpm_ood.data is the subpackage now: names forward
            public = next(n for n in vars(new) if not n.startswith("_") and getattr(new, n).__class__.__name__
                          in ("function", "type"))
            sys.modules["ddpm_ood." + old].__dict__.pop(public, None)
            assert getattr(importlib.import_module("ddpm_ood." + old), public) is getattr(new, public)
        else:
            sys.modules.pop("ddpm_ood." + old, None)
            assert importlib.import_module("ddpm_ood." + old) is new
        sys.modules.pop("src." + old, None)
        assert importlib.import_module("src." + old) is new
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert len(messages) == 2 and all(f"import ddpm_ood.{MOVED[old]}" in m and "0.6.0" in m for m in messages)


@pytest.mark.slow
def test_the_package_imports_from_any_folder_without_torch_until_used(tmp_path):
    """The installed package, not the working directory, provides ddpm_ood: a notebook elsewhere imports it."""
    code = ("import sys, ddpm_ood\nassert 'torch' not in sys.modules\n"
            "from ddpm_ood import OODDetector, ImageDetector, load_model\n"
            "import ddpm_ood.api\nassert OODDetector is ddpm_ood.api.OODDetector\nprint(ddpm_ood.__file__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(PACKAGE) in result.stdout


def test_the_tests_mirror_the_package():
    """tests/<subpackage>/test_<module>[_<aspect>].py, for a subpackage and module that exist; file names
    unique (pytest imports them by name)."""
    tests = ROOT / "tests"
    files = sorted(tests.rglob("test_*.py"))
    names = [path.name for path in files]
    assert len(names) == len(set(names)), "two test files of one name"
    for path in files:
        folder = path.parent.relative_to(tests)
        if folder == ROOT.joinpath("tests").relative_to(tests):
            continue  # package-wide and script tests
        assert (PACKAGE / folder).is_dir(), f"{path.relative_to(ROOT)}: no subpackage ddpm_ood.{folder}"
        modules = {p.stem for p in (PACKAGE / folder).glob("*.py")} | {"contract", folder.name}  # and the registry
        stem = path.stem[len("test_"):]
        assert any(stem == m or stem.startswith(m + "_") for m in modules), \
            f"{path.relative_to(ROOT)} is named after no module of ddpm_ood.{folder}"
