"""The field's lesion-localisation metrics on oracle cases: maps whose answers are known, and the best Dice
against a brute-force search over every threshold."""
from __future__ import annotations

import numpy as np
import pytest

from ddpm_ood.metrics.localisation import (best_dice, dice, eroded, foreground, healthy_thresholds, localisation,
                                           postprocess, without_small_components)


def ball(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(d) for d in shape], indexing="ij"))
    return ((grid - np.reshape(centre, (-1,) + (1,) * len(shape))) ** 2).sum(0) <= radius ** 2


def test_dice_of_known_overlaps():
    a = np.zeros((6, 6), bool)
    a[:2] = True  # 12 voxels
    b = np.zeros((6, 6), bool)
    b[1:3] = True  # 12 voxels, 6 shared
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0 and dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # nothing to find, nothing found


def test_the_best_dice_is_the_brute_force_best_over_every_threshold():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(400), 2)  # many ties
    truth = rng.random(400) < scores * 0.6
    brute = max(((dice(scores >= s, truth), s) for s in np.unique(scores)), key=lambda pair: pair[0])
    found, threshold = best_dice(scores, truth)
    assert found == pytest.approx(brute[0]) and dice(scores >= threshold, truth) == pytest.approx(found)
    assert np.isnan(best_dice(scores, np.zeros(400, bool))[0])


def test_small_components_go_and_larger_ones_stay():
    segmentation = np.zeros((10, 10), bool)
    segmentation[0, :7] = True  # 7 voxels: removed
    segmentation[5, :8] = True  # 8 voxels: kept
    segmentation[9, 9] = segmentation[8, 8] = True  # diagonal neighbours are not connected
    kept = without_small_components(segmentation)
    assert kept[5].sum() == 8 and kept.sum() == 8


def test_the_brain_mask_is_eroded_within_each_slice():
    square = np.zeros((7, 7), bool)
    square[1:6, 1:6] = True
    assert eroded(square).sum() == 9  # 5x5 -> 3x3
    volume = np.stack([square] * 3)
    assert eroded(volume).sum() == 27  # not across slices: every slice keeps its 3x3
    assert (eroded(volume, 0) == volume).all()


def test_postprocessing_drops_lone_hot_voxels_and_everything_outside_the_brain():
    residual = np.zeros((20, 20))
    residual[10, 10] = 50.0  # one hot voxel: the median filter removes it
    residual[2:9, 2:9] = 1.0  # a 7x7 lesion survives it
    brain = np.zeros((20, 20), bool)
    brain[1:19, 1:19] = True
    mapped = postprocess(residual, brain)
    assert mapped[10, 10] == 0.0 and mapped[5, 5] == 1.0 and mapped[0, 0] == 0.0
    assert mapped[1, 1] == 0.0  # the eroded rim of the brain mask is not evaluated


def test_healthy_thresholds_flag_the_asked_fraction_of_healthy_voxels():
    rng = np.random.default_rng(1)
    healthy = [rng.random((30, 30)) for _ in range(4)]
    brains = [np.ones((30, 30), bool)] * 4
    thresholds = healthy_thresholds(healthy, brains)
    for fraction, threshold in thresholds.items():
        flagged = np.mean(np.concatenate([(h >= threshold).ravel() for h in healthy]))
        assert flagged == pytest.approx(fraction, abs=0.002)


def test_a_perfect_map_an_inverted_one_and_noise():
    shape = (16, 16, 16)
    truths = [ball(shape, (8, 8, 8), 3), ball(shape, (5, 10, 9), 2)]
    brains = [np.ones(shape, bool)] * 2
    thresholds = {0.05: 0.5}
    perfect = localisation([t.astype(float) for t in truths], truths, brains, thresholds)
    assert (perfect.auroc, perfect.auprc, perfect.best_dice) == (1.0, 1.0, 1.0)
    assert perfect.at_threshold[0.05]["dice"] == 1.0 and perfect.at_threshold[0.05]["recall"] == 1.0
    inverted = localisation([-t.astype(float) for t in truths], truths, brains, thresholds)
    assert inverted.auroc == 0.0
    rng = np.random.default_rng(2)
    noise = localisation([rng.random(shape) for _ in truths], truths, brains, {0.05: 0.95})
    assert noise.auroc == pytest.approx(0.5, abs=0.05)
    prevalence = np.mean(np.concatenate([t.ravel() for t in truths]))
    assert noise.auprc == pytest.approx(prevalence, abs=0.02)  # a map that knows nothing: AUPRC = prevalence


def test_without_a_brain_mask_the_foreground_is_evaluated():
    image = np.zeros((8, 8))
    image[2:6, 2:6] = 0.7
    assert foreground(image).sum() == 16


def test_scan_scores_are_the_maps_mean_and_99th_percentile_inside_the_brain():
    from ddpm_ood.metrics.localisation import per_image, scan_scores

    values = np.arange(200, dtype=float).reshape(10, 20)
    brain = np.zeros((10, 20), bool)
    brain[:5] = True  # values 0..99
    assert scan_scores(values, brain) == {"map_mean": 49.5, "map_p99": pytest.approx(98.01)}
    truth = np.zeros((10, 20), bool)
    truth[4, 10:] = True  # the 10 highest values inside the brain
    row = per_image(values, truth, brain, threshold=90)
    assert row["lesion_voxels"] == 10 and row["pixel_auroc"] == 1.0 and row["best_dice"] == 1.0
    assert row["dice_at_5pct"] == 1.0  # >= 90 inside the brain is exactly the lesion
