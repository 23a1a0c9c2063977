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


def error_maps(examples: dict) -> np.ndarray:
    """(N, K, *spatial): squared error per pixel of each start's reconstruction, mean over channels."""
    inputs, recons = np.asarray(examples["inputs"], np.float64), np.asarray(examples["reconstructions"], np.float64)
    return ((recons - inputs[:, None]) ** 2).mean(axis=2)


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
