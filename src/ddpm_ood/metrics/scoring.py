"""The arithmetic of scoring, on arrays and frames only: z-scores, OOD metrics, intervals, thresholds.

Sign convention (stated once): a higher score means more out-of-distribution, and OOD images
are the positive class of the AUROC.

No file I/O and no detector here: the detectors (:mod:`ddpm_ood.detectors`) and the evaluation
(:mod:`ddpm_ood.evaluation.scores`) call these.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from ddpm_ood.utils.errors import ScoringError


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
                    "(no spread: every fit image gives it the same value), so it cannot be z-scored. Either the fit "
                    "images are alike (use more, and different, ones: the validation set, or reconstruct.py "
                    "--fit_ids) or the model treats every image alike (a model, or a latent model's first stage, "
                    "trained too briefly: train it longer).")
        return cls(mean, std, by)

    def keys(self) -> list:
        """The ``by`` values the z-scores were fitted for."""
        return list(self.mean.index) if self.by else []

    def to_state(self) -> dict:
        """The fit as plain JSON (no pickle): exact, since JSON keeps every digit of a float."""
        if not self.by:
            return {"by": None, "mean": self.mean.to_dict(), "std": self.std.to_dict()}
        keys = [k.item() if isinstance(k, np.generic) else k for k in self.mean.index]
        return {"by": self.by, "keys": keys, "mean": {c: self.mean[c].tolist() for c in self.mean.columns},
                "std": {c: self.std[c].tolist() for c in self.std.columns}}

    @classmethod
    def from_state(cls, state: dict) -> "ZScore":
        if state["by"] is None:
            return cls(pd.Series(state["mean"], dtype=float), pd.Series(state["std"], dtype=float), None)
        index = pd.Index(state["keys"], name=state["by"])
        frame = lambda part: pd.DataFrame({c: np.asarray(v, dtype=float) for c, v in state[part].items()}, index=index)
        return cls(frame("mean"), frame("std"), state["by"])

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


# The OOD metrics, computed as pytorch-ood's OODMetrics (and OpenOOD) compute them (tested equal):
# - auroc: OOD is the positive class (1.0: every OOD image scores above every in-distribution one);
# - aupr_in: area under the precision-recall curve, by the trapezoidal rule, with in-distribution
#   images as the positive class (a lower score = more "in");
# - aupr_out: the same with OOD images as the positive class;
# - fpr95tpr: pytorch-ood's FPR95TPR, OpenOOD's FPR@95: with OOD as the positive class, the share
#   of in-distribution images flagged as OOD at the first threshold that catches 95% of the OOD ones;
# and ODIN's:
# - fpr95: with in-distribution images as the positive class, the share of OOD images accepted as
#   in-distribution at the first threshold that accepts 95% of the in-distribution images.
METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr95tpr")


def _curve_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At each distinct threshold t_1 > ... > t_m (the distinct scores), how many positive and
    negative samples score t_j or more (equal scores enter together)."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last sample of each group of equal scores
    tps = np.cumsum(positive[order])[last]
    return tps, np.flatnonzero(last) + 1 - tps


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1])).sum() / 2)


def _aupr(tps: np.ndarray, fps: np.ndarray) -> float:
    """The precision-recall curve as scikit-learn draws it (ending at recall 0, precision 1), by trapezoids."""
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return -_trapezoid(np.r_[recall[::-1], 0.0], np.r_[precision[::-1], 1.0])


def ood_metrics(in_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    scores = np.concatenate([in_scores, ood_scores]).astype(np.float64)
    is_ood = np.concatenate([np.zeros(len(in_scores), bool), np.ones(len(ood_scores), bool)])
    tps, fps = _curve_counts(scores, is_ood)  # OOD positive, a higher score = more OOD
    n_ood, n_in = tps[-1], fps[-1]
    fpr, tpr = np.r_[0.0, fps / n_in], np.r_[0.0, tps / n_ood]
    # The same counts with the roles swapped and the order reversed: in-distribution positive, lower = more "in".
    in_tps, in_fps = (n_in - np.r_[0, fps[:-1]])[::-1], (n_ood - np.r_[0, tps[:-1]])[::-1]
    fpr_in, tpr_in, _ = roc_curve(~is_ood, -scores)
    return {
        "auroc": auroc(in_scores, ood_scores),
        "aupr_in": _aupr(in_tps, in_fps),
        "aupr_out": _aupr(tps, fps),
        "fpr95": float(fpr_in[np.searchsorted(tpr_in, 0.95, side="left")]),
        "fpr95tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
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
