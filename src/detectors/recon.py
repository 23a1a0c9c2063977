"""The paper's detector (Graham et al. 2023): reconstruction errors from several start points.

Each image is noised to every start point t, reconstructed with PLMS down to t = 0
(:mod:`src.reconstruction`), and compared with its input by MSE and LPIPS. Per t, each metric
is z-scored with the validation set's mean and std; a score is the mean over t of the sum of
its metrics' z-scores (:mod:`src.scoring`). Its results are ``ood/results_<set>.csv``, one row
per (image, t), the paper's file names.

This module holds the facts the scripts share: the metrics, the scores made of them, the
paper's score, and the cost. It imports nothing heavy.
"""
from __future__ import annotations

from typing import Sequence

METRIC_COLUMNS = {"mse": "mse", "lpips": "perceptual_difference"}  # metric -> its results column
METRICS = tuple(METRIC_COLUMNS)
SCORES = {"mse+lpips": ["mse", "lpips"], "mse": ["mse"], "lpips": ["lpips"]}


def default_score(metrics: Sequence[str]) -> str:
    """The paper's score: MSE + LPIPS z-scores, or MSE alone for an MSE-only run."""
    return "mse+lpips" if "lpips" in metrics else "mse"


def available_scores(metrics: Sequence[str]) -> list[str]:
    """The scores a run's metrics allow, the paper's first."""
    return sorted((s for s, chosen in SCORES.items() if set(chosen) <= set(metrics)),
                  key=lambda s: s != default_score(metrics))


def nfe(start_indices: Sequence[int]) -> int:
    """UNet evaluations per image: a start at grid index j takes j + 1 PLMS steps plus the first
    step's corrector (350 for the paper's 100 steps and skip 16)."""
    return int(sum(int(j) + 2 for j in start_indices))
