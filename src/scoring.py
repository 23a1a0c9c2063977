"""From reconstruction errors to OOD scores and AUROC.

Sign convention (stated once): a higher score means more out-of-distribution, and OOD images
are the positive class of the AUROC.

Per start t, each metric is z-scored with the mean and standard deviation (ddof = 1, pandas'
default) of the validation set's values at that t; an image's score is the mean over t of the
sum of its metrics' z-scores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

RESULT_COLUMNS = ("filename", "type", "t", "mse", "perceptual_difference")
METRIC_COLUMNS = {"mse": "mse", "lpips": "perceptual_difference"}


class ScoringError(ValueError):
    """Results that cannot be scored; the message names the file and what is wrong."""


def read_results(path: Path) -> pd.DataFrame:
    """Read a results CSV written by reconstruct.py and check its columns."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ScoringError(f"Cannot read results file {path}: {err}. Re-run reconstruct.py for it.") from err
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ScoringError(f"Results file {path} lacks column(s) {missing}; it was not written by reconstruct.py.")
    if frame.empty:
        raise ScoringError(f"Results file {path} has no rows. Re-run reconstruct.py for it.")
    return frame


def available_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics a results frame holds values for ("mse", and "lpips" unless it was MSE-only)."""
    return [name for name, column in METRIC_COLUMNS.items() if frame[column].notna().all()]


def select_t(frame: pd.DataFrame, max_t: int | None = None, t_skip: int = 1) -> pd.DataFrame:
    """Keep rows with t < max_t, then every ``t_skip``-th remaining start point."""
    if max_t is not None:
        frame = frame[frame["t"] < max_t]
    kept = np.sort(frame["t"].unique())[::t_skip]
    return frame[frame["t"].isin(kept)]


def fit_validation_stats(val: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per-t mean and std (ddof = 1) of each metric on the validation set; index t."""
    stats = val.groupby("t")[[METRIC_COLUMNS[m] for m in metrics]].agg(["mean", "std"])
    if (val.groupby("t").size() < 2).any():
        raise ScoringError("The validation results need at least two images per t for a standard deviation.")
    return stats


def score_frame(frame: pd.DataFrame, stats: pd.DataFrame, metrics: list[str], source: str = "results") -> pd.Series:
    """OOD score per image: mean over t of the sum of the chosen metrics' z-scores."""
    unknown_t = sorted(int(t) for t in set(frame["t"].unique()) - set(stats.index))
    if unknown_t:
        raise ScoringError(
            f"{source} has start points t={unknown_t} that the validation results lack; "
            "reconstruct both with the same --num_inference_steps and --inference_skip_factor."
        )
    z = np.zeros(len(frame))
    for metric in metrics:
        column = METRIC_COLUMNS[metric]
        mean = frame["t"].map(stats[(column, "mean")])
        std = frame["t"].map(stats[(column, "std")])
        z = z + ((frame[column] - mean) / std).to_numpy()
    per_row = pd.Series(z, index=frame.index)
    image_key = "image_index" if "image_index" in frame.columns else "filename"
    return per_row.groupby(frame[image_key], sort=False).mean()


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC with OOD as the positive class (1.0: every OOD image scores above every in-distribution one)."""
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(ood_scores))])
    return float(roc_auc_score(labels, np.concatenate([in_scores, ood_scores])))
