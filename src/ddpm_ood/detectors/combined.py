"""Combinations of detectors: do they complement each other?

Each member's main score is z-scored with its mean and std (ddof = 1, the one z-score of
:mod:`ddpm_ood.metrics.scoring`) on the validation images, and a combination is their sum: ``combo`` over
every detector measured, ``combo-cheap`` over all but the expensive ones (the paper's
reconstruction score; the others cost ~10 UNet calls each). No further fit; a combination costs
what its members cost.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ddpm_ood.metrics.scoring import ZScore


class Combination:
    name = "combo"
    score_names = ("combo", "combo-cheap")

    @staticmethod
    def members(detectors) -> dict[str, list[str]]:
        """Each combination's members among ``detectors`` (those with results, in registry order); a
        combination of fewer than two, or one equal to ``combo``, is left out."""
        every = [d.name for d in detectors]
        combos = {"combo": every, "combo-cheap": [d.name for d in detectors if not d.expensive]}
        return {name: members for name, members in combos.items()
                if len(members) >= 2 and not (name == "combo-cheap" and members == every)}

    @staticmethod
    def fit(val_scores: pd.DataFrame, members: list[str]) -> ZScore:
        """``val_scores``: one column per member, its main score of each validation image."""
        return ZScore.fit(val_scores, members, source="combination")

    @staticmethod
    def score(fitted: ZScore, scores: pd.DataFrame, members: list[str]) -> np.ndarray:
        z = fitted.apply(scores, members)
        return np.asarray(sum(z[name] for name in members), dtype=np.float64)


def combine(fit_scores: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> np.ndarray:
    """Sum over detectors of (score - fit mean) / fit std. ``fit_scores``: each detector's
    scores of the fit set; ``scores``: the same detectors' scores of the images to score."""
    members = list(fit_scores)
    fitted = Combination.fit(pd.DataFrame(fit_scores), members)
    return Combination.score(fitted, pd.DataFrame({m: np.asarray(scores[m]) for m in members}), members)
