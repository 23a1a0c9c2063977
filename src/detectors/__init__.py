"""The OOD detectors of one trained eps-model, registered in one place.

Sign convention (as everywhere here): a higher score means more out-of-distribution.

==========  ==============================================================  ====================
name        what it measures per image (module)                             UNet calls per image
==========  ==============================================================  ====================
recon       the paper's: MSE and LPIPS of PLMS reconstructions from          sum over starts of
            several start points, z-scored per t on the validation set      (grid index + 2)
            (:mod:`src.detectors.recon`; scores mse+lpips, mse, lpips)
path        DiffPath (Heng et al. 2024): statistics of the eps along the    path_steps (10)
            deterministic DDIM path from the image towards noise
            (:mod:`src.detectors.path`; scores path-1d, path-6d)
msma        MSMA (Mahmood et al. 2021): norms of the score at several       msma_levels (10)
            noise levels at the noise-free image (:mod:`src.detectors.msma`)
denoise     eps-prediction error at several t with seeded noise,            denoise_levels (10)
            z-scored per t on the validation set (:mod:`src.detectors.denoise`)
combo       (scored, never measured) the sum of every measured detector's   the sum of theirs
            validation-z-scored main score; combo-cheap leaves recon out
            (:mod:`src.detectors.combined`)
==========  ==============================================================  ====================

``reconstruct.py --detectors`` measures them (recon's results are ``ood/results_<set>.csv``,
the others' ``ood/<name>/results_<set>.csv``); ``ood_detection.py`` fits and scores every
detector it finds. A new detector is one module with a :class:`~src.detectors.base.FeatureDetector`
subclass, one line in ``_FEATURE_DETECTORS`` below, and its test.

This module imports nothing heavy: the scripts' ``--help`` reads the names from here.
"""
from __future__ import annotations

import importlib

DETECTORS = ("recon", "path", "msma", "denoise")
DEFAULT_DETECTORS = ("recon",)  # the paper's score alone: the seed's command lines are unchanged
_FEATURE_DETECTORS = {"path": "src.detectors.path:PathDetector", "msma": "src.detectors.msma:MSMADetector",
                      "denoise": "src.detectors.denoise:DenoiseDetector"}
FEATURE_DETECTORS = tuple(_FEATURE_DETECTORS)


def parse_detectors(text: str) -> list[str]:
    """``recon,path`` -> ['recon', 'path']; ``all`` -> every detector. Raises ValueError."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(DETECTORS)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        raise ValueError(f"unknown detector(s) {unknown or text!r}; choose from {', '.join(DETECTORS)}, or 'all'")
    return list(dict.fromkeys(names))


def feature_detector_class(name: str):
    """The FeatureDetector subclass registered as ``name`` (imported on first use)."""
    module, cls = _FEATURE_DETECTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)
