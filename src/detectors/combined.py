"""A combination of detectors: do they complement each other?

Each detector's main score is z-scored with its mean and std (ddof = 1) on the fit set (the
validation images), and the combination is their sum: ``combo`` over every detector measured,
``combo-cheap`` over all but the paper's reconstruction score (the detectors of ~10 UNet calls
each). No further fit; its cost is the sum of its parts'.
"""
from __future__ import annotations

import numpy as np

from src.errors import ScoringError


def combine(fit_scores: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over detectors of (score - fit mean) / fit std. ``fit_scores``: each detector's
    scores of the fit set; ``scores``: the same detectors' scores of the images to score."""
    total = 0.0
    for name, fit in fit_scores.items():
        std = float(np.std(fit, ddof=1)) if len(fit) > 1 else 0.0
        if not std > 0:
            raise ScoringError(f"combination: the {name} scores of the fit set have no spread; use more images.")
        total = total + (np.asarray(scores[name]) - float(np.mean(fit))) / std
    return np.asarray(total, dtype=np.float64)
