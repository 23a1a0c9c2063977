"""The arithmetic of scoring, on arrays and frames only: z-scores, OOD metrics, intervals, thresholds.

Sign convention (stated once): a higher score means more out-of-distribution, and OOD images
are the positive class of the AUROC.

No file I/O and no detector here: the detectors (:mod:`src.detectors`) and the evaluation
(:mod:`src.evaluation`) call these.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from src.errors import ScoringError


def show_value(value) -> str:
    """A value as a person reads it: 2, nan, 'abc' (not np.int64(2))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


class ZScore(NamedTuple):
    """Mean and standard deviation (ddof = 1, pandas' default, as the paper's code) of each column
    on the fit images (the validation set), per value of ``by`` (e.g. per start point t) or over
    all rows (``by`` None). The one z-score of the code base: the paper's score, the denoising
    error and the combination of detectors all use it."""

    mean: pd.DataFrame | pd.Series  # index ``by`` values and columns ``columns``; or indexed by column
    std: pd.DataFrame | pd.Series
    by: str | None

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str], by: str | None = None,
            source: str = "The validation results") -> "ZScore":
        """Fit on ``frame``; every column needs two or more rows (per ``by`` value) and some spread."""
        columns = list(columns)
        sizes = frame.groupby(by).size() if by else pd.Series([len(frame)])
        if (sizes < 2).any():
            per = f" per {by}" if by else ""
            raise ScoringError(f"{source}: at least two images{per} are needed for a standard deviation.")
        if by:
            stats = frame.groupby(by)[columns].agg(["mean", "std"])
            mean, std = stats.xs("mean", axis=1, level=1), stats.xs("std", axis=1, level=1)
        else:
            stats = frame[columns].agg(["mean", "std"])
            mean, std = stats.loc["mean"], stats.loc["std"]
        for column in columns:
            spread = std[column] if by else pd.Series([std[column]])
            flat = spread[~(spread > 0)]
            if len(flat):
                at = f" at {by} = {show_value(flat.index[0])}" if by else ""
                raise ScoringError(
                    f"{source}: {column} has standard deviation {show_value(flat.iloc[0])}{at} over the fit images "
                    "(no spread), so it cannot be z-scored. Use more (and different) validation images.")
        return cls(mean, std, by)

    def keys(self) -> list:
        """The ``by`` values the z-scores were fitted for."""
        return list(self.mean.index) if self.by else []

    def apply(self, frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
        """Each row's z-score of each column: (value - fit mean) / fit std, at the row's ``by`` value.
        Rows whose ``by`` value was not fitted are an error (callers check start points first)."""
        columns = list(columns)
        if not self.by:
            return (frame[columns] - self.mean[columns]) / self.std[columns]
        unknown = sorted(v.item() if isinstance(v, np.generic) else v
                         for v in set(frame[self.by].unique()) - set(self.mean.index))
        if unknown:
            raise ScoringError(f"{self.by} = {unknown} has no fitted mean and spread (the validation results lack it).")
        key = frame[self.by]
        return pd.DataFrame({c: (frame[c] - key.map(self.mean[c])) / key.map(self.std[c]) for c in columns},
                            index=frame.index)


def select_start_t(t_values: Sequence[int], max_start_t: int | None = None, min_start_t: int | None = None,
                   t_skip: int = 1) -> list[int]:
    """The start points kept: t < max_start_t and t >= min_start_t, then every ``t_skip``-th of
    those (ascending). The one filter of both scripts' start-point flags."""
    kept = sorted({int(t) for t in t_values if (max_start_t is None or t < max_start_t)
                   and (min_start_t is None or t >= min_start_t)})
    return kept[::t_skip]


def auroc(in_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC with OOD as the positive class (1.0: every OOD image scores above every in-distribution one)."""
    labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(ood_scores))])
    return float(roc_auc_score(labels, np.concatenate([in_scores, ood_scores])))


# The OOD metrics of pytorch-ood and OpenOOD, each from scikit-learn's curves:
# - auroc: OOD is the positive class (1.0: every OOD image scores above every in-distribution one);
# - aupr_in: average precision with in-distribution images as the positive class (lower score = in);
# - aupr_out: average precision with OOD images as the positive class;
# - fpr95: with in-distribution images as the positive class, the share of OOD images accepted
#   as in-distribution at the first threshold that accepts 95% of the in-distribution images.
METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95")


def ood_metrics(in_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    scores = np.concatenate([in_scores, ood_scores])
    is_ood = np.concatenate([np.zeros(len(in_scores)), np.ones(len(ood_scores))])
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores)  # in-distribution positive, lower score = more "in"
    return {
        "auroc": auroc(in_scores, ood_scores),
        "aupr_in": float(average_precision_score(1 - is_ood, -scores)),
        "aupr_out": float(average_precision_score(is_ood, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def bootstrap_intervals(in_scores: np.ndarray, ood_scores: np.ndarray, n_resamples: int, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric: the in-distribution and OOD scores are
    resampled with replacement separately (each keeps its size), ``n_resamples`` times, from a
    generator seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in METRIC_NAMES}
    for _ in range(n_resamples):
        values = ood_metrics(rng.choice(in_scores, len(in_scores)), rng.choice(ood_scores, len(ood_scores)))
        for name, value in values.items():
            samples[name].append(value)
    tail = 100 * (1 - level) / 2
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) for name, v in samples.items()}


def fit_threshold(val_scores: np.ndarray, tpr: float) -> float:
    """The score at or below which a share ``tpr`` of the validation images fall."""
    return float(np.quantile(val_scores, tpr, method="higher"))
