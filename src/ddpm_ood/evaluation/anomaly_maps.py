"""Anomaly maps: *where* an image is unusual, which the paper's score alone cannot say.

``reconstruct.py --save_maps N`` keeps, for the first N images of every set (the validation set
included), the images and their reconstructions from every start point, made with the very noise
the scores were (``ood/examples_<set>.npz``). From them:

- :func:`error_maps`: the squared error per pixel (voxel) of each start point, the mean over
  channels: (N, K, *spatial);
- :func:`zscored_maps`: each map z-scored per pixel and start point with the mean and standard
  deviation of the validation images' maps there (a standard deviation below 1% of its mean over
  the image is raised to that floor, so flat background does not blow up), and their mean over the
  start points, as the paper's score averages its z-scores over t.

``ood_detection.py`` writes them to ``ood/maps_<set>.npz`` and draws them over the images
(``ood/figures/maps_<set>.png``; mid-slices of volumes).
"""
from __future__ import annotations

import numpy as np

STD_FLOOR = 0.01  # of the mean validation standard deviation


def every_draw(examples: dict) -> np.ndarray:
    """(N, D, K, C, *spatial): the reconstructions of every noise draw (D = 1 unless --noise_draws)."""
    recons = np.asarray(examples["reconstructions"], np.float64)[:, None]
    if "more_reconstructions" in examples:
        recons = np.concatenate([recons, np.asarray(examples["more_reconstructions"], np.float64)], axis=1)
    return recons


def error_maps(examples: dict) -> np.ndarray:
    """(N, K, *spatial): squared error per pixel of each start's reconstruction, mean over channels and over
    the noise draws (as the scores average their MSE over --noise_draws)."""
    inputs = np.asarray(examples["inputs"], np.float64)
    return ((every_draw(examples) - inputs[:, None, None]) ** 2).mean(axis=(1, 3))


def zscored_maps(maps: np.ndarray, val_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``maps`` z-scored per pixel and start point on ``val_maps`` (both (N, K, *spatial)); returns the
    z maps and their mean over the start points, (N, *spatial)."""
    if len(val_maps) < 2:
        raise ValueError("z-scoring maps needs the maps of at least 2 validation images (--save_maps 2 or more).")
    if maps.shape[1:] != val_maps.shape[1:]:
        raise ValueError(f"maps of shape {maps.shape[1:]} cannot be z-scored with validation maps of shape "
                         f"{val_maps.shape[1:]}: re-run reconstruct.py with the same settings for every set.")
    mean, std = val_maps.mean(axis=0), val_maps.std(axis=0, ddof=1)
    axes = tuple(range(1, std.ndim))
    floor = STD_FLOOR * std.mean(axis=axes, keepdims=True) + 1e-12
    z = (maps - mean) / np.maximum(std, floor)
    return z, z.mean(axis=1)


# --- the maps measured against ground truth (split CSVs with a ``mask`` column) --------------------------

def residual_maps(examples: dict) -> np.ndarray:
    """(N, *spatial): the field's residual, |x - x_hat| averaged over channels, start points and noise draws."""
    inputs = np.asarray(examples["inputs"], np.float64)
    return np.abs(every_draw(examples) - inputs[:, None, None]).mean(axis=(1, 2, 3))


def baseline_maps(inputs: np.ndarray, val_inputs: np.ndarray) -> np.ndarray:
    """The no-model baseline: each voxel's |z-score| against the healthy validation images there, (N, *spatial)
    (mean over channels); every map is shown beside it."""
    inputs, val_inputs = np.asarray(inputs, np.float64).mean(axis=1), np.asarray(val_inputs, np.float64).mean(axis=1)
    z, _ = zscored_maps(inputs[:, None], val_inputs[:, None])  # one "start point": the image itself
    return np.abs(z[:, 0])


def brains(examples: dict) -> list[np.ndarray]:
    """Where the maps of kept examples are evaluated: each one's brain mask (else its foreground), eroded."""
    from ddpm_ood.metrics.localisation import eroded, foreground

    if "brain_masks" in examples:
        return [eroded(b) for b in np.asarray(examples["brain_masks"], bool)]
    return [eroded(foreground(np.asarray(x).mean(axis=0))) for x in examples["inputs"]]


def map_threshold(healthy_maps: np.ndarray, healthy_examples: dict, fraction: float = 0.05) -> float:
    """The value of the post-processed maps that flags ``fraction`` of the healthy images' evaluated voxels
    (``healthy_maps``: the in-distribution test images', never lesion data); :func:`flag` takes it."""
    from ddpm_ood.metrics.localisation import healthy_thresholds, postprocess

    healthy_brains = brains(healthy_examples)
    post_healthy = [postprocess(m, b, erosion=0) for m, b in zip(healthy_maps, healthy_brains)]
    return healthy_thresholds(post_healthy, healthy_brains, (fraction,))[fraction]


def flag(maps: np.ndarray, examples: dict, threshold: float) -> np.ndarray:
    """uint8 masks: each map post-processed inside its evaluated region (:func:`brains` of ``examples``), 1 where
    it reaches ``threshold``, components of 7 voxels or fewer removed (as the Dice at a threshold counts them)."""
    from ddpm_ood.metrics.localisation import postprocess, without_small_components

    return np.stack([without_small_components((postprocess(m, b, erosion=0) >= threshold) & b)
                     for m, b in zip(maps, brains(examples))]).astype(np.uint8)


def localisation_rows(maps_by_set: dict[str, dict[str, np.ndarray]], examples_by_set: dict[str, dict],
                      healthy: str = "in", images: list | None = None) -> list[dict]:
    """The field's pixel-level metrics of every map kind (``maps_by_set[set][kind]``, (N, *spatial)) on every
    set whose examples carry ``masks``: post-processed (median filter, eroded brain mask: the examples'
    ``brain_masks``, else each input's foreground), thresholds that flag 1 / 5 / 10 % of the voxels of the
    ``healthy`` set's maps (the in-distribution test images: never lesion data). One row per (set, kind),
    pooled over its images, with the scan-level AUROC of the map's mean and 99th percentile inside the brain
    (healthy images against the set's). ``images``, if given, gets one row per (set, kind, image)."""
    from ddpm_ood.metrics.localisation import healthy_thresholds, localisation, per_image, postprocess, scan_scores
    from ddpm_ood.metrics.scoring import auroc

    if healthy not in maps_by_set:
        return []
    healthy_brains = brains(examples_by_set[healthy])
    rows = []
    for kind in maps_by_set[healthy]:
        post_healthy = [postprocess(m, b, erosion=0) for m, b in zip(maps_by_set[healthy][kind], healthy_brains)]
        thresholds = healthy_thresholds(post_healthy, healthy_brains)
        healthy_scans = [scan_scores(m, b) for m, b in zip(post_healthy, healthy_brains)]
        for name, examples in examples_by_set.items():
            if "masks" not in examples or name == healthy or kind not in maps_by_set.get(name, {}):
                continue
            inside = brains(examples)
            post = [postprocess(m, b, erosion=0) for m, b in zip(maps_by_set[name][kind], inside)]
            truths = list(np.asarray(examples["masks"], bool))
            result = localisation(post, truths, inside, thresholds)
            scans = [scan_scores(m, b) for m, b in zip(post, inside)]
            row = {"set": name, "map": kind, "n_images": len(post), "pixel_auroc": result.auroc,
                   "pixel_auprc": result.auprc, "best_dice": result.best_dice}
            for fraction, values in result.at_threshold.items():
                for metric, value in values.items():
                    row[f"{metric}_at_{round(fraction * 100)}pct"] = value
            for score in ("map_mean", "map_p99"):
                row[f"scan_auroc_{score[4:]}"] = auroc(np.array([s[score] for s in healthy_scans]),
                                                       np.array([s[score] for s in scans]))
            rows.append(row)
            if images is not None:
                for i, (m, truth, brain, scan) in enumerate(zip(post, truths, inside, scans)):
                    images.append({"set": name, "map": kind, "filename": str(examples["filenames"][i])
                                   if "filenames" in examples else str(i),
                                   **per_image(m, truth, brain, thresholds[0.05]), **scan})
    return rows
