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
    for column in ("partial_l1_t250", "partial_l1_t500", "partial_l1_t750"):
        np.testing.assert_allclose(frame[column], distance, atol=1e-5)
    assert frame["partial_l1_t500"].iloc[0] < 1e-5 and calls == [9]  # one batch: 3 images x 3 t
    loaded = types.SimpleNamespace(model_fn=model, schedule=schedule, space=None, device=torch.device("cpu"))
    examples = detector.examples(loaded, images, seed=0)
    assert examples["reconstructions"].shape == (3, 3, 1, 4, 4) and list(examples["t"]) == [250, 500, 750]
    np.testing.assert_allclose(residual_maps(examples), (images - c).abs()[:, 0].numpy(), atol=1e-5)


def test_its_score_is_the_mean_over_t_of_the_fit_sets_z_scores():
    detector = PartialDetector(timesteps=[100, 200])
    fit = np.array([[1.0, 10.0], [2.0, 12.0], [3.0, 14.0]])
    fitted = detector.fit_features(fit)
    score = detector.score_features(fitted, np.array([[4.0, 16.0]]))["partial"]
    np.testing.assert_allclose(score, [(2.0 + 2.0) / 2])  # (4 - 2) / 1 and (16 - 12) / 2


@pytest.mark.parametrize("text", ["500,250", "0,500", "250,1000", "a", ""])
def test_partial_t_outside_the_model_is_refused(text):
    with pytest.raises(ValueError, match="increasing timesteps between 1 and 999"):
        parse_timesteps(text, 1000)
    model = types.SimpleNamespace(schedule=DDPMSchedule())
    with pytest.raises(DataError, match=f"--partial_t {text}: "):
        PartialDetector.from_args(types.SimpleNamespace(partial_t=text), model)
    assert PartialDetector.from_args(types.SimpleNamespace(partial_t="500"), model).timesteps == [500]
