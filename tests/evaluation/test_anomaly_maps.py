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


def test_flagged_maps_mark_what_reaches_the_healthy_threshold_inside_the_brain():
    """The thresholded masks the NIfTI files carry. The healthy maps are noise in [0, 0.1], so the threshold
    (flagging 5 % of their brain voxels) lies below 0.1 and above the lesion images' flat 0.05 background. An
    8x8 block of 10s is flagged where the median filter of 5 keeps it: every pixel whose 5x5 window holds at
    least 13 of the block's, i.e. the block less 3 pixels at each corner (52); one hot pixel is not, nor a
    strip of 10s outside the brain mask."""
    from ddpm_ood.evaluation.anomaly_maps import flag, map_threshold

    def flagged_maps(maps, examples, healthy_maps, healthy_examples):
        return flag(maps, examples, map_threshold(healthy_maps, healthy_examples))

    rng = np.random.default_rng(0)
    brain = np.zeros((24, 24), np.uint8)
    brain[2:22, 2:22] = 1
    healthy = 0.1 * rng.random((6, 24, 24))
    healthy_examples = {"inputs": np.ones((6, 1, 24, 24)), "brain_masks": np.repeat(brain[None], 6, axis=0)}
    lesion = np.full((2, 24, 24), 0.05)
    lesion[0, 6:14, 6:14] = 10.0  # an 8x8 block
    lesion[0, 18, 18] = 10.0  # one hot pixel
    lesion[1, :, :2] = 10.0  # outside the brain mask
    examples = {"inputs": np.ones((2, 1, 24, 24)), "brain_masks": np.repeat(brain[None], 2, axis=0)}
    flagged = flagged_maps(lesion, examples, healthy, healthy_examples)
    assert flagged.dtype == np.uint8 and flagged.shape == (2, 24, 24) and set(np.unique(flagged)) <= {0, 1}
    block = np.zeros((24, 24), bool)
    block[6:14, 6:14] = True
    for corner in [(6, 6), (6, 13), (13, 6), (13, 13)]:  # each corner pixel and its two neighbours on the edges
        rows, cols = (corner[0], corner[0] + (1 if corner[0] == 6 else -1)), (corner[1], corner[1] + (1 if corner[1] == 6 else -1))
        block[corner[0], cols[0]] = block[corner[0], cols[1]] = block[rows[1], corner[1]] = False
    np.testing.assert_array_equal(flagged[0].astype(bool), block)
    assert flagged[1].sum() == 0
    healthy_flagged = flagged_maps(healthy, healthy_examples, healthy, healthy_examples)
    assert 0 < healthy_flagged.sum() <= 0.05 * 6 * brain.sum()  # 5 % reach it, less the components removed
