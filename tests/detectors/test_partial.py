"""The partial-diffusion detector (pDDPM / cDDPM; issue 32, part 3): oracle cases with known answers, its
knob, and its examples in the reconstruction examples' layout (its maps)."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from ddpm_ood.detectors.base import measure_features
from ddpm_ood.detectors.partial import PartialDetector, parse_timesteps
from ddpm_ood.diffusion.ddpm import DDPMSchedule
from ddpm_ood.evaluation.anomaly_maps import residual_maps
from ddpm_ood.utils.errors import DataError
from helpers.oracles import point_mass_oracle


def test_a_point_mass_models_x0_prediction_is_the_point_so_the_residual_is_the_distance_to_it():
    """Data that is the single image c: the exact eps gives x0_hat = c from any t and any noise, so each
    partial_l1_t is mean |x - c| and the maps are |x - c| itself."""
    schedule = DDPMSchedule()
    c = torch.linspace(0.1, 0.9, 16, dtype=torch.float32).reshape(1, 1, 4, 4)
    images = (c + 0.2 * torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    images[0] = c[0]  # an in-distribution image: nothing to find
    calls = []
    oracle = point_mass_oracle(schedule, c)
    model = lambda x, t: (calls.append(len(x)), oracle(x, t))[1]
    detector = PartialDetector()
    assert detector.timesteps == [250, 500, 750] and detector.nfe() == 3
    frame = measure_features(detector, model, schedule, images, ["a", "b", "c"], "val", 3, 0, torch.device("cpu"),
                             progress=False)
    distance = (images - c).abs().flatten(1).mean(1).double().numpy()
    for column in ("partial_l1_t250", "partial_l1_t500", "partial_l1_t750"):  # and the maps' p99 beside
        np.testing.assert_allclose(frame[column], distance, atol=1e-5)
    assert frame["partial_l1_t500"].iloc[0] < 1e-5 and calls == [9]  # one batch: 3 images x 3 t
    loaded = types.SimpleNamespace(model_fn=model, schedule=schedule, space=None, device=torch.device("cpu"))
    examples = detector.examples(loaded, images, seed=0)
    assert examples["reconstructions"].shape == (3, 3, 1, 4, 4) and list(examples["t"]) == [250, 500, 750]
    np.testing.assert_allclose(residual_maps(examples), (images - c).abs()[:, 0].numpy(), atol=1e-5)


def test_its_scores_are_the_mean_over_t_of_the_fit_sets_z_scores():
    detector = PartialDetector(timesteps=[100, 200])
    assert detector.columns() == ["partial_l1_t100", "partial_l1_t200", "partial_p99_t100", "partial_p99_t200"]
    fit = np.array([[1.0, 10.0, 0.0, 5.0], [2.0, 12.0, 1.0, 5.5], [3.0, 14.0, 2.0, 6.0]])
    fitted = detector.fit_features(fit)
    scores = detector.score_features(fitted, np.array([[4.0, 16.0, 4.0, 5.0]]))
    np.testing.assert_allclose(scores["partial"], [(2.0 + 2.0) / 2])  # (4 - 2) / 1 and (16 - 12) / 2
    np.testing.assert_allclose(scores["partial-p99"], [(3.0 - 1.0) / 2])  # (4 - 1) / 1 and (5 - 5.5) / 0.5


def test_the_map_score_is_the_99th_percentile_of_the_median_filtered_residual():
    """Against the point-mass oracle (the residual is |x - c| exactly): an 8x8 block off by 0.5 in a 32x32
    image survives the median filter, so its map's 99th percentile is 0.5 while its L1 is 0.5 * 64 / 1024;
    one hot pixel off by 0.9 does not survive it (p99 0), though it moves the L1."""
    schedule = DDPMSchedule()
    c = torch.full((1, 1, 32, 32), 0.2)
    images = c.repeat(3, 1, 1, 1)
    images[1, 0, 10:18, 10:18] = 0.7
    images[2, 0, 5, 5] = 1.0
    frame = measure_features(PartialDetector(timesteps=[500]), point_mass_oracle(schedule, c), schedule, images,
                             ["a", "b", "c"], "val", 3, 0, torch.device("cpu"), progress=False)
    np.testing.assert_allclose(frame["partial_p99_t500"], [0.0, 0.5, 0.0], atol=1e-5)
    np.testing.assert_allclose(frame["partial_l1_t500"], [0.0, 0.5 * 64 / 1024, 0.8 / 1024], atol=1e-5)


def test_partial_results_from_before_the_map_score_are_refused_saying_what_to_do():
    from ddpm_ood.utils.errors import ScoringError

    assert PartialDetector.from_settings(PartialDetector().settings()).timesteps == [250, 500, 750]
    with pytest.raises(ScoringError, match="re-run reconstruct.py --detectors partial --restart"):
        PartialDetector.from_settings({"detector": "partial", "partial_t": [250, 500, 750]})


@pytest.mark.parametrize("text", ["500,250", "0,500", "250,1000", "a", ""])
def test_partial_t_outside_the_model_is_refused(text):
    with pytest.raises(ValueError, match="increasing timesteps between 1 and 999"):
        parse_timesteps(text, 1000)
    model = types.SimpleNamespace(schedule=DDPMSchedule())
    with pytest.raises(DataError, match=f"--partial_t {text}: "):
        PartialDetector.from_args(types.SimpleNamespace(partial_t=text), model)
    assert PartialDetector.from_args(types.SimpleNamespace(partial_t="500"), model).timesteps == [500]
