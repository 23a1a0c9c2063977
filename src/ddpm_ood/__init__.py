"""Denoising diffusion models for out-of-distribution detection (Graham et al., 2023).

The public API, importable from any folder once the package is installed
(``pip install -r requirements.txt`` installs it)::

    from ddpm_ood import OODDetector, ImageDetector, load_model
    detector = OODDetector.load("demo_output/models/fashionmnist_demo")
    scores = detector.score(images)   # (N, C, H, W) in [0, 1] -> (N,), higher = more OOD

The five top-level scripts are thin front ends; the work lives here, in subpackages that each
import only the ones listed before them (``tests/test_layering.py`` checks):

- ``utils/``: errors, atomic file writes, how a process runs, torchrun process groups.
- ``data/``: split files, image and volume loading; the benchmark and medical datasets.
- ``metrics/``: image distances (MSE, LPIPS) and the score arithmetic (z-scores, AUROC, intervals).
- ``diffusion/``: the DDPM schedule, the PLMS sampler and the multi-start reconstruction.
- ``runs/``: a run folder's paths and manifests, its lock, results read and written in chunks.
- ``models/``: UNet and configs, image and model spaces, model files, first stages, diffusers and
  MONAI sources, and ``load_model``, which gives every detector its model.
- ``training/``: the settings, the DDPM loop and the first stage's.
- ``detectors/``: the registry, every detector (the paper's ``recon`` among them) and fit files.
- ``evaluation/``: results to scores and metrics, tables, figures and anomaly maps.
- ``api``: ``OODDetector``, ``ImageDetector`` and the pytorch-ood adapter; ``cli``: the scripts' flag
  types and error boundary (imported by the scripts only).

The 0.4 module paths (``ddpm_ood.inference``, ``src.data``, ...) still work with a
DeprecationWarning until 0.6; ``_moved.py`` maps each to its new home.
"""

# The public names, imported on first use (PEP 562), so that the scripts' --help never loads torch.
_EXPORTS = {
    "OODDetector": "ddpm_ood.api", "ImageDetector": "ddpm_ood.api", "pytorch_ood_detector": "ddpm_ood.api",
    **dict.fromkeys(("load_model", "load_model_fn", "LoadedModel", "ModelSource", "RunModel", "DiffusersModel",
                     "MonaiBundle", "DdpmOodRun"), "ddpm_ood.models.loading"),
    "LatentSpace": "ddpm_ood.models.first_stage",
    "DETECTORS": "ddpm_ood.detectors", "detector_class": "ddpm_ood.detectors",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.5.0"

from ddpm_ood import _moved  # noqa: E402,F401  (the 0.4 module paths, deprecated)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm_ood' has no attribute {name!r}")
