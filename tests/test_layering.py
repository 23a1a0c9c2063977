"""The shape of the code, checked: library modules import only modules below them, never the
scripts' src/cli.py; the scripts hold no detector names and read like a table of contents; the
old API path still works, with a warning."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT
from ddpm_ood.detectors import COMBINATIONS, DETECTORS

PACKAGE = ROOT / "src" / "ddpm_ood"

# Lowest first: a module may import only modules listed before it.
LAYERS = [
    "errors", "anomaly_maps", "dataset_names", "runtime", "train_config", "files", "runlock", "data", "run_files", "distributed", "diffusion",
    "unet", "config", "boundary", "checkpoint", "first_stage", "autoencoder_training", "pretrained", "monai_models",
    "inference", "metrics", "reconstruction", "scoring", "results",
    "results_store", "figures", "datasets_download", "medical_datasets", "training",
    "detectors", "detectors.base", "detectors.density", "detectors.recon", "detectors.path", "detectors.msma",
    "detectors.denoise", "detectors.combined", "fits", "evaluation", "report", "api", "cli",
]
SCRIPTS = ("train.py", "reconstruct.py", "ood_detection.py", "get_datasets.py", "train_vqvae.py")


def src_imports(path) -> set[str]:
    """Every src module a file imports, at module level or inside a function."""
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


def layers(modules) -> list[str]:
    """LAYERS, with any detector module it does not name (a new detector) placed among the detectors,
    after the shared ones: a new detector needs no line here."""
    new = sorted(m for m in modules if m.startswith("detectors.") and m not in LAYERS)
    at = LAYERS.index("detectors.combined")
    return LAYERS[:at] + new + LAYERS[at:]


def test_every_module_imports_only_modules_below_it():
    modules = sorted(p for p in (PACKAGE).rglob("*.py") if module_name(p))
    order = layers(module_name(p) for p in modules)
    assert sorted(module_name(p) for p in modules) == sorted(order), "place every src module in LAYERS"
    for path in modules:
        name = module_name(path)
        upward = [m for m in src_imports(path) if order.index(m) >= order.index(name)]
        assert not upward, f"src/{path.relative_to(PACKAGE)} imports {upward}, which are not below it"


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


def test_the_old_src_imports_work_with_a_deprecation_warning():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "try:\n    import src.detector\nexcept DeprecationWarning as err:\n    print('warned:', err)\n"
            "warnings.simplefilter('ignore')\nimport src.detector, src.api, src.detectors.base, ddpm_ood.api\n"
            "assert src.detector.OODDetector is src.api.OODDetector is ddpm_ood.api.OODDetector\n"
            "assert src.detectors.base.Detector is __import__('ddpm_ood.detectors.base').detectors.base.Detector")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warned: src.detector is deprecated: import ddpm_ood.api" in result.stdout


def test_the_package_imports_from_any_folder_without_torch_until_used(tmp_path):
    """The installed package, not the working directory, provides ddpm_ood: a notebook elsewhere imports it."""
    code = ("import sys, ddpm_ood\nassert 'torch' not in sys.modules\n"
            "from ddpm_ood import OODDetector, ImageDetector, load_model\n"
            "import ddpm_ood.api\nassert OODDetector is ddpm_ood.api.OODDetector\nprint(ddpm_ood.__file__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert str(PACKAGE) in result.stdout
