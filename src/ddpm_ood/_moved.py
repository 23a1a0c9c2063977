"""The module paths of version 0.4 and where each module lives since 0.5 (December 2026).

Import the new paths. The old ones still work until version 0.6 with a DeprecationWarning
(``ddpm_ood.<old>`` and, from the repository's root, ``src.<old>``); no file that a run wrote
names a module, so saved model files, checkpoints, manifests and fits are unchanged.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

DEPRECATED_SINCE, REMOVED_IN = "0.5.0 (2026-12-07)", "0.6.0"

MOVED = {
    "errors": "utils.errors", "files": "utils.files", "runtime": "utils.runtime", "distributed": "utils.distributed",
    "data": "data.loading", "dataset_names": "data.catalogue", "datasets_download": "data.download",
    "medical_datasets": "data.medical",
    "metrics": "metrics.distances", "scoring": "metrics.scoring",
    "diffusion": "diffusion.ddpm", "reconstruction": "diffusion.reconstruction",
    "unet": "models.unet", "config": "models.config", "boundary": "models.spaces", "checkpoint": "models.model_file",
    "first_stage": "models.first_stage", "pretrained": "models.diffusers_models", "monai_models": "models.monai_models",
    "inference": "models.loading",
    "run_files": "runs.layout", "runlock": "runs.lock", "results": "runs.results", "results_store": "runs.store",
    "train_config": "training.settings", "training": "training.ddpm", "autoencoder_training": "training.first_stage",
    "fits": "detectors.fits",
    "evaluation": "evaluation.scores", "report": "evaluation.report", "figures": "evaluation.figures",
    "anomaly_maps": "evaluation.anomaly_maps",
}


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} is deprecated since {DEPRECATED_SINCE} and goes in {REMOVED_IN}: import {new}",
                  DeprecationWarning, stacklevel=stacklevel)


class ModuleAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``<prefix>.<old>`` -> the module at its new path itself (one module object, so patches and
    isinstance agree). ``renamed`` maps old names to new full module names."""

    def __init__(self, prefix: str, renamed: dict[str, str]):
        self.prefix, self.renamed = prefix, renamed

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.prefix + ".") and fullname[len(self.prefix) + 1:] in self.renamed:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = self.renamed[spec.name[len(self.prefix) + 1:]]
        warn_moved(spec.name, new)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass  # already executed under its new name


def forward_attribute(package: str, name: str):
    """A package that took an old module's name (``ddpm_ood.data``, once a module) forwards the
    old module's attributes to where that module now lives, with the warning."""
    if name.startswith("__") or importlib.util.find_spec(f"{package}.{name}") is not None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")  # dunders; submodules import as such
    new = "ddpm_ood." + MOVED[package.rsplit(".", 1)[-1]]
    module = importlib.import_module(new)
    if not hasattr(module, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warn_moved(f"{package}.{name}", f"{new}.{name}", stacklevel=4)
    value = getattr(module, name)
    setattr(sys.modules[package], name, value)  # once: the next look-up finds it without a second warning
    return value


# ddpm_ood.<old> for the old modules whose name no package took.
_ALIAS = ModuleAlias("ddpm_ood", {old: "ddpm_ood." + new for old, new in MOVED.items() if "." in new
                                  and old != new.split(".")[0]})
if not any(isinstance(f, ModuleAlias) and f.prefix == "ddpm_ood" for f in sys.meta_path):
    sys.meta_path.insert(0, _ALIAS)
