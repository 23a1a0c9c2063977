"""Anomaly maps (issue 25, part 4): oracle cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from ddpm_ood.evaluation.anomaly_maps import error_maps, zscored_maps


def test_error_maps_are_per_pixel_squared_errors_averaged_over_channels():
    inputs = np.zeros((1, 3, 2, 2))
    recons = np.zeros((1, 2, 3, 2, 2))
    recons[0, 1, :, 0, 1] = [0.3, 0.6, 0.9]  # start 1, pixel (0, 1)
    maps = error_maps({"inputs": inputs, "reconstructions": recons})
    assert maps.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(maps[0, 1, 0, 1], (0.09 + 0.36 + 0.81) / 3)
    assert maps.sum() == pytest.approx((0.09 + 0.36 + 0.81) / 3)


def test_zscored_maps_find_the_unusual_pixel():
    rng = np.random.default_rng(0)
    val = rng.normal(1.0, 0.1, (50, 3, 8, 8))
    image = rng.normal(1.0, 0.1, (1, 3, 8, 8))
    image[0, :, 5, 2] += 2.0  # 20 standard deviations at one pixel, at every start
    z, mean = zscored_maps(image, val)
    assert mean.shape == (1, 8, 8) and np.unravel_index(mean[0].argmax(), (8, 8)) == (5, 2)
    assert mean[0, 5, 2] > 10 and abs(np.delete(mean[0].ravel(), 5 * 8 + 2)).max() < 5
    # z of a validation image's own maps is centred: mean 0 over the validation images
    z_val, _ = zscored_maps(val, val)
    np.testing.assert_allclose(z_val.mean(axis=0), 0, atol=1e-9)


def test_zscored_maps_refuse_too_few_or_other_shapes():
    with pytest.raises(ValueError, match="at least 2 validation images"):
        zscored_maps(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="same settings"):
        zscored_maps(np.zeros((1, 3, 4, 4)), np.zeros((2, 2, 4, 4)))
