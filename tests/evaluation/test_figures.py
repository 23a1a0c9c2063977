"""The anomaly-map figure (issue 32, part 4): a volume through the slice with the most lesion (or the map's peak),
the ground truth outlined, and a bounded grid however many images are kept."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ddpm_ood.evaluation.figures import MAPS_PER_ROW, maps_figure, shown_slice


def test_a_volume_is_shown_through_its_lesion_else_through_the_maps_peak():
    heat = np.zeros((6, 4, 4))
    heat[1, 2, 2] = 9.0
    mask = np.zeros((6, 4, 4), bool)
    mask[4, :2, :2] = True
    mask[3, 0, 0] = True
    assert shown_slice(heat, mask) == 4  # the most lesion voxels
    assert shown_slice(heat, None) == 1 and shown_slice(heat, np.zeros_like(mask)) == 1  # the map's peak


def test_many_maps_wrap_into_rows_not_one_strip(tmp_path):
    rng = np.random.default_rng(0)
    n = 100
    inputs, maps = rng.random((n, 1, 6, 8, 8)), rng.normal(size=(n, 6, 8, 8))
    masks = np.zeros((n, 6, 8, 8), bool)
    masks[:, 2, 3:5, 3:5] = True
    maps_figure(inputs, maps, tmp_path / "maps.png", "maps", masks=masks)
    width, height = Image.open(tmp_path / "maps.png").size
    assert width < 2000 and height < 12000, (width, height)  # 8 a row, the first 48: was one 13,662-pixel strip
    maps_figure(inputs[:3], maps[:3], tmp_path / "few.png", "few")  # fewer than a row, no masks
    assert Image.open(tmp_path / "few.png").size[0] < Image.open(tmp_path / "maps.png").size[0]
    assert MAPS_PER_ROW == 8
