"""How well anomaly maps find lesions, as the brain-MRI anomaly-detection field measures it (pDDPM / cDDPM's
evaluation code): pixel (voxel) AUROC and AUPRC, the best Dice over thresholds, and
Dice, precision and recall at thresholds that flag a given fraction of *healthy* voxels (no labels needed).

A map is first post-processed as that evaluation does: a median filter (size 5), then only the voxels of the
brain mask (eroded by one voxel in each slice) count. A thresholded map loses its connected components of
``MIN_COMPONENT`` voxels or fewer before its Dice is taken. Every function takes numpy arrays of one image's
shape ((H, W) or (D, H, W)); the pooled metrics take lists of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MEDIAN_SIZE = 5
MIN_COMPONENT = 7  # components of this many voxels or fewer are removed from a thresholded map
HEALTHY_FRACTIONS = (0.01, 0.05, 0.10)


def foreground(image: np.ndarray, level: float = 0.0) -> np.ndarray:
    """Where there is anything to evaluate when no brain mask is given: voxels above ``level`` (images are
    min-max scaled, so the background of a skull-stripped scan is 0)."""
    return np.asarray(image) > level


def eroded(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """The mask eroded by ``iterations`` voxels within each 2D slice (the last two axes), as the field's
    evaluation erodes its brain masks slice by slice; voxels on the array's border count as outside."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    if iterations == 0:
        return mask
    structure = ndimage.generate_binary_structure(2, 1)
    if mask.ndim == 2:
        return ndimage.binary_erosion(mask, structure, iterations=iterations, border_value=0)
    return np.stack([ndimage.binary_erosion(s, structure, iterations=iterations, border_value=0) for s in mask])


def postprocess(residual: np.ndarray, brain: np.ndarray, median_size: int = MEDIAN_SIZE,
                erosion: int = 1) -> np.ndarray:
    """The map the metrics see: ``residual`` median-filtered, and 0 outside the eroded brain mask."""
    from scipy import ndimage

    smoothed = ndimage.median_filter(np.asarray(residual, np.float64), size=median_size) if median_size > 1 \
        else np.asarray(residual, np.float64)
    return np.where(eroded(brain, erosion), smoothed, 0.0)


def without_small_components(segmentation: np.ndarray, min_size: int = MIN_COMPONENT) -> np.ndarray:
    """A binary map without its connected components (face-connected) of ``min_size`` voxels or fewer."""
    from scipy import ndimage

    segmentation = np.asarray(segmentation, bool)
    labels, count = ndimage.label(segmentation)
    if count == 0:
        return segmentation
    sizes = np.bincount(labels.ravel())
    keep = sizes > min_size
    keep[0] = False
    return keep[labels]


def dice(segmentation: np.ndarray, truth: np.ndarray) -> float:
    """2 |A and B| / (|A| + |B|); 1 when both are empty (nothing to find, nothing found)."""
    a, b = np.asarray(segmentation, bool), np.asarray(truth, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def best_dice(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The best Dice over every threshold "score >= s" (exact: every distinct score is tried), and that
    threshold. ``scores`` and ``truth``: flat arrays of the voxels evaluated (pooled over images)."""
    scores, truth = np.asarray(scores, np.float64).ravel(), np.asarray(truth, bool).ravel()
    positives = truth.sum()
    if positives == 0 or scores.size == 0:
        return float("nan"), float("nan")
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(truth[order])
    last_of_value = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold takes every voxel of its value
    flagged = np.arange(1, scores.size + 1)[last_of_value]
    values = 2 * hits[last_of_value] / (flagged + positives)
    best = int(np.argmax(values))
    return float(values[best]), float(ranked[last_of_value][best])


def healthy_thresholds(healthy_maps: Sequence[np.ndarray], healthy_brains: Sequence[np.ndarray],
                       fractions: Sequence[float] = HEALTHY_FRACTIONS) -> dict[float, float]:
    """For each fraction f, the threshold that flags f of the healthy scans' evaluated voxels (the (1 - f)
    quantile of their post-processed maps): chosen without any lesion label."""
    values = np.concatenate([np.asarray(m)[np.asarray(b, bool)] for m, b in zip(healthy_maps, healthy_brains)])
    if values.size == 0:
        raise ValueError("the healthy maps have no voxels inside their brain masks")
    return {float(f): float(np.quantile(values, 1 - f)) for f in fractions}


@dataclass
class Localisation:
    """The field's pixel-level numbers for a set of lesion maps (pooled over its images)."""

    auroc: float
    auprc: float
    best_dice: float
    best_threshold: float
    at_threshold: dict  # fraction of healthy voxels flagged -> {"threshold", "dice", "precision", "recall"}


def localisation(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], brains: Sequence[np.ndarray],
                 thresholds: dict[float, float], min_component: int = MIN_COMPONENT) -> Localisation:
    """Pooled pixel AUROC, AUPRC and best Dice over the voxels inside the brain masks, and Dice, precision and
    recall at each healthy threshold (small components removed), of post-processed ``maps``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    inside = [np.asarray(b, bool) for b in brains]
    scores = np.concatenate([np.asarray(m)[b] for m, b in zip(maps, inside)])
    labels = np.concatenate([np.asarray(t, bool)[b] for t, b in zip(truths, inside)])
    if labels.all() or not labels.any():
        auroc = auprc = float("nan")  # one class only: not defined
    else:
        auroc, auprc = float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))
    best, best_at = best_dice(scores, labels)
    at = {}
    for fraction, threshold in thresholds.items():
        found = [without_small_components((np.asarray(m) >= threshold) & b, min_component) for m, b in
                 zip(maps, inside)]
        flagged = np.concatenate([f[b] for f, b in zip(found, inside)])
        hits = np.logical_and(flagged, labels).sum()
        at[fraction] = {"threshold": threshold, "dice": dice(flagged, labels),
                        "precision": float(hits / flagged.sum()) if flagged.any() else float("nan"),
                        "recall": float(hits / labels.sum()) if labels.any() else float("nan")}
    return Localisation(auroc, auprc, best, best_at, at)


def scan_scores(post_map: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """A map's image-level scores (the field's scan score): the mean of the post-processed map inside the brain
    mask, and its 99th percentile (which a small lesion moves where the mean barely does)."""
    values = np.asarray(post_map, np.float64)[np.asarray(brain, bool)]
    if values.size == 0:
        return {"map_mean": float("nan"), "map_p99": float("nan")}
    return {"map_mean": float(values.mean()), "map_p99": float(np.quantile(values, 0.99))}


def per_image(post_map: np.ndarray, truth: np.ndarray, brain: np.ndarray, threshold: float,
              min_component: int = MIN_COMPONENT) -> dict[str, float]:
    """One image's pixel AUROC and AUPRC (NaN without both classes inside the brain), best Dice, and Dice at
    ``threshold`` (small components removed), of its post-processed map; with its lesion size."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    inside = np.asarray(brain, bool)
    scores, labels = np.asarray(post_map, np.float64)[inside], np.asarray(truth, bool)[inside]
    both = labels.any() and not labels.all()
    found = without_small_components((np.asarray(post_map) >= threshold) & inside, min_component)[inside]
    return {"lesion_voxels": int(labels.sum()),
            "pixel_auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
            "pixel_auprc": float(average_precision_score(labels, scores)) if both else float("nan"),
            "best_dice": best_dice(scores, labels)[0], "dice_at_5pct": dice(found, labels)}
