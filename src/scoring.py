"""From reconstruction errors to OOD scores and AUROC.

Sign convention (stated once): a higher score means more out-of-distribution, and OOD images
are the positive class of the AUROC.

Per start t, each metric is z-scored with the mean and standard deviation (ddof = 1, pandas'
default) of the validation set's values at that t; an image's score is the mean over t of the
sum of its metrics' z-scores.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from src.detectors.recon import METRIC_COLUMNS
from src.errors import ScoringError

RESULT_COLUMNS = ("filename", "type", "t", "mse", "perceptual_difference")
# Settings that every results file scored together must share (the rest, such as the split
# and the number of images, differ by design). Each results file has its settings manifest.
SHARED_SETTINGS = {
    "model_file": "model file", "model_file_bytes": "model file size", "model_file_mtime_ns": "model file time",
    "num_inference_steps": "steps", "start_t": "start points", "metrics": "metrics", "lpips_pad": "LPIPS padding",
    "clamp_for_lpips": "LPIPS clamp", "seed": "seed", "precision": "precision", "is_grayscale": "channels",
}


def settings_file(results_path: Path) -> Path:
    """``results_<set>.csv`` -> ``results_<set>.settings.json`` (written by reconstruct.py)."""
    return results_path.with_name(f"{results_path.stem}.settings.json")


def read_settings(results_path: Path) -> dict | None:
    """The settings manifest of a results file, or None if it has none (not written by reconstruct.py)."""
    path = settings_file(results_path)
    if not path.exists():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ScoringError(f"Cannot read {path} ({err}); re-run reconstruct.py with --restart for that set.") from err
    if not isinstance(settings, dict):
        raise ScoringError(f"{path} is not a settings manifest; re-run reconstruct.py with --restart for that set.")
    return settings


def settings_mismatch(reference: dict, other: dict) -> list[str]:
    """Which shared settings differ between two manifests, each as 'name (a vs b)'."""
    return [f"{label} ({reference.get(key)!r} vs {other.get(key)!r})" for key, label in SHARED_SETTINGS.items()
            if reference.get(key) != other.get(key)]


def read_results_csv(path: Path, columns) -> pd.DataFrame:
    """Read a results CSV written by reconstruct.py (any detector's): readable, with ``columns``, not empty."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ScoringError(f"Cannot read results file {path}: {err}. Re-run reconstruct.py for it.") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoringError(f"Results file {path} lacks column(s) {missing}; it was not written by reconstruct.py.")
    if frame.empty:
        raise ScoringError(f"Results file {path} has no rows. Re-run reconstruct.py for it.")
    return frame


def read_results(path: Path) -> pd.DataFrame:
    """Read a reconstruction results CSV and check its columns and rows."""
    frame = read_results_csv(path, RESULT_COLUMNS)
    check_rows(frame, path)
    return frame


def show_value(value) -> str:
    """A value as a person reads it: 2, nan, 'abc' (not np.int64(2))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def csv_line(frame: pd.DataFrame, position: int) -> str:
    """The CSV line of a row (the header is line 1)."""
    return f"line {int(frame.index[position]) + 2}"


def check_rows(frame: pd.DataFrame, path: Path) -> None:
    """Every value a number, every metric finite (LPIPS may be empty throughout: an MSE-only
    run), and exactly one row per (image, t) for every t the file holds."""
    redo = "Re-run reconstruct.py with --restart for this set."
    for column in ("t", *METRIC_COLUMNS.values()):
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce")
        text = values.isna() & raw.notna()
        if text.any():
            at = int(np.argmax(text.to_numpy()))
            raise ScoringError(f"{path} {csv_line(frame, at)}: {column} = {show_value(raw.iloc[at])} is not a number. {redo}")
        if column == "perceptual_difference" and values.isna().all():
            frame[column] = values
            continue  # an MSE-only run
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            at = int(np.argmax(bad))
            raise ScoringError(f"{path} {csv_line(frame, at)}: {column} = {show_value(raw.iloc[at])} is not a finite number. {redo}")
        frame[column] = values
    if (frame["t"] != frame["t"].round()).any():
        at = int(np.argmax((frame["t"] != frame["t"].round()).to_numpy()))
        raise ScoringError(f"{path} {csv_line(frame, at)}: t = {show_value(frame['t'].iloc[at])} is not an integer. {redo}")
    frame["t"] = frame["t"].astype(np.int64)
    key = image_key(frame)
    duplicated = frame.duplicated([key, "t"], keep="first").to_numpy()
    if duplicated.any():
        at = int(np.argmax(duplicated))
        raise ScoringError(f"{path} {csv_line(frame, at)}: a second row for {key} {show_value(frame[key].iloc[at])} and "
                           f"t = {frame['t'].iloc[at]}. {redo}")
    all_t = set(frame["t"].unique())
    counts = frame.groupby(key, sort=False)["t"].size()
    short = counts[counts < len(all_t)]
    if len(short):
        image = short.index[0]
        missing = sorted(int(t) for t in all_t - set(frame.loc[frame[key] == image, "t"]))
        raise ScoringError(f"{path}: {key} {show_value(image)} has no row for t = {missing} (the file's other images "
                           f"have them). {redo}")


def available_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics a results frame holds values for ("mse", and "lpips" unless it was MSE-only)."""
    return [name for name, column in METRIC_COLUMNS.items() if frame[column].notna().all()]


def select_t(frame: pd.DataFrame, max_t: int | None = None, t_skip: int = 1) -> pd.DataFrame:
    """Keep rows with t < max_t, then every ``t_skip``-th remaining start point."""
    if max_t is not None:
        frame = frame[frame["t"] < max_t]
    kept = np.sort(frame["t"].unique())[::t_skip]
    return frame[frame["t"].isin(kept)]


def fit_validation_stats(val: pd.DataFrame, metrics: list[str], source: str = "The validation results") -> pd.DataFrame:
    """Per-t mean and std (ddof = 1) of each metric on the validation set; index t."""
    if (val.groupby("t").size() < 2).any():
        raise ScoringError(f"{source}: at least two images per t are needed for a standard deviation.")
    stats = val.groupby("t")[[METRIC_COLUMNS[m] for m in metrics]].agg(["mean", "std"])
    for metric in metrics:
        std = stats[(METRIC_COLUMNS[metric], "std")]
        flat = std[~(std > 0)]
        if len(flat):
            raise ScoringError(
                f"{source}: {METRIC_COLUMNS[metric]} has standard deviation {show_value(flat.iloc[0])} at t = {int(flat.index[0])} "
                "over the validation images, so it cannot be z-scored. Use more (and different) validation images.")
    return stats


def score_frame(frame: pd.DataFrame, stats: pd.DataFrame, metrics: list[str], source: str = "results") -> pd.Series:
    """OOD score per image: mean over t of the sum of the chosen metrics' z-scores."""
    unknown_t = sorted(int(t) for t in set(frame["t"].unique()) - set(stats.index))
    if unknown_t:
        raise ScoringError(
            f"{source} has start points t={unknown_t} that the validation results lack; "
            "reconstruct both with the same --num_inference_steps and --inference_skip_factor."
        )
    per_row = sum(metric_z(frame, stats, metric) for metric in metrics)
    return per_row.groupby(frame[image_key(frame)], sort=False).mean()


def image_key(frame: pd.DataFrame) -> str:
    """The column that names an image: image_index, or filename in files without it."""
    return "image_index" if "image_index" in frame.columns else "filename"


def metric_z(frame: pd.DataFrame, stats: pd.DataFrame, metric: str) -> pd.Series:
    """Each row's z-score of ``metric``: (value - validation mean at its t) / validation std at its t."""
    column = METRIC_COLUMNS[metric]
    return (frame[column] - frame["t"].map(stats[(column, "mean")])) / frame["t"].map(stats[(column, "std")])


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


def z_table(frame: pd.DataFrame, stats: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per image: its per-t z-score of every metric, as columns ``z_<metric>_t<t>``, indexed by
    image (image_index, or filename for files without it), in the file's order."""
    key = image_key(frame)
    columns = {}
    for metric in metrics:
        z = metric_z(frame, stats, metric)
        wide = pd.DataFrame({key: frame[key], "t": frame["t"], "z": z}).pivot(index=key, columns="t", values="z")
        for t in wide.columns:
            columns[f"z_{metric}_t{int(t)}"] = wide[t]
    table = pd.DataFrame(columns)
    return table.loc[pd.unique(frame[key])]
