"""ddpm-ood's later schedule and parameterisation settings against their published formulas and against
MONAI's and diffusers' own schedulers: the schedule names, v- and x0-prediction, and the SNR shift."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_ood.diffusion.ddpm import (PREDICTIONS, DDPMSchedule, eps_from_prediction, make_betas, shift_snr)

ATOL = 1e-6


@pytest.mark.parametrize("ours, monai_name", [("scaled_linear_beta", "scaled_linear_beta"),
                                              ("scaled_linear", "scaled_linear_beta"),
                                              ("linear", "scaled_linear_beta"),
                                              ("linear_beta", "linear_beta"), ("plain_linear", "linear_beta")])
def test_the_schedule_names_give_monais_alphas_cumprod(ours, monai_name):
    from monai.networks.schedulers import DDPMScheduler

    monai = DDPMScheduler(schedule=monai_name, beta_start=0.0015, beta_end=0.0195).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(DDPMSchedule(beta_schedule=ours).alphas_cumprod, monai, rtol=0, atol=ATOL)


def test_the_two_schedules_are_not_the_same():
    """Linear in sqrt(beta) and linear in beta differ: the name decides which one a run trains with."""
    assert not np.allclose(make_betas("scaled_linear_beta", 1000, 0.0015, 0.0195),
                           make_betas("linear_beta", 1000, 0.0015, 0.0195))
    with pytest.raises(ValueError, match="Unknown beta_schedule"):
        make_betas("cosine", 1000, 0.0015, 0.0195)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_target_and_its_eps_round_trip(prediction):
    """Whatever the network learns to output, the eps it stands for at x_t is the noise that made x_t."""
    schedule = DDPMSchedule(prediction=prediction)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 8, 8, generator=generator), torch.randn(6, 1, 8, 8, generator=generator)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    x_t = schedule.add_noise(x0, noise, t)
    torch.testing.assert_close(schedule.to_eps(schedule.target(x0, noise, t), x_t, t), noise, rtol=0, atol=1e-4)


def test_v_and_x0_targets_and_conversions_match_diffusers():
    """v = sqrt(a) eps - sqrt(1-a) x0 is diffusers' get_velocity; the eps we convert v or x0 to gives the
    x0 that diffusers' DDPMScheduler.step predicts from the same output."""
    from diffusers import DDPMScheduler

    generator = torch.Generator().manual_seed(1)  # float64 throughout: the formulas are compared, not roundings
    x0 = torch.rand(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    noise, output = (torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    for prediction in ("v_prediction", "sample"):
        theirs = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                               prediction_type=prediction, clip_sample=False)
        ours = DDPMSchedule.from_alphas_cumprod(theirs.alphas_cumprod.double().numpy())
        ours.prediction = prediction
        for t in (3, 400, 999):
            steps = torch.full((4,), t)
            if prediction == "v_prediction":
                torch.testing.assert_close(ours.target(x0, noise, steps), theirs.get_velocity(x0, noise, steps),
                                           rtol=0, atol=ATOL)
            x_t = theirs.add_noise(x0, noise, steps)
            a = theirs.alphas_cumprod[t].double()
            eps = ours.to_eps(output, x_t, steps)
            x0_from_eps = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
            x0_theirs = theirs.step(output, t, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
            torch.testing.assert_close(x0_from_eps, x0_theirs, rtol=0, atol=ATOL)


def test_eps_from_prediction_refuses_an_unknown_type():
    one = torch.ones(1)
    with pytest.raises(ValueError, match="Unknown prediction type"):
        eps_from_prediction(one, one, one, one, "score")
    with pytest.raises(ValueError, match="Unknown prediction type"):
        DDPMSchedule(prediction="score")


def test_the_snr_shift_multiplies_the_snr_at_every_t():
    base = DDPMSchedule()
    for s in (0.25, 1.0, 4.0):
        shifted = DDPMSchedule(snr_shift=s)
        snr = base.alphas_cumprod / (1 - base.alphas_cumprod)
        snr_shifted = shifted.alphas_cumprod / (1 - shifted.alphas_cumprod)
        np.testing.assert_allclose(snr_shifted / snr, s, rtol=1e-9)
        assert np.all(np.diff(shifted.alphas_cumprod) < 0)  # still a forward process: the signal falls with t
        np.testing.assert_allclose(np.cumprod(shifted.alphas), shifted.alphas_cumprod, rtol=1e-12)
    np.testing.assert_array_equal(shift_snr(base.alphas_cumprod, 1.0), base.alphas_cumprod)


def test_b_scale_and_snr_shift_are_the_same_snr():
    """Scaling the data by b multiplies the SNR by b^2: x_t / sqrt(b^2 a + 1 - a) under b_scale is x_t of the
    schedule shifted by b^2 (the noise level differs, the information does not)."""
    b, t = 2.0, torch.tensor([300])
    base, shifted = DDPMSchedule(), DDPMSchedule(snr_shift=b * b)
    x0, noise = torch.rand(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    a = base.alphas_cumprod[300]
    scaled = base.add_noise(b * x0, noise, t) / np.sqrt(b * b * a + 1 - a)
    torch.testing.assert_close(scaled, shifted.add_noise(x0, noise, t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps, skip", [(100, 1), (100, 2), (100, 16), (50, 7), (10, 3)])
def test_ddpm_oods_start_points_are_monais_pndm_timesteps(steps, skip):
    """--start_points ddpm-ood-head: reversed(PNDMScheduler timesteps)[1::skip], as ddpm-ood's later
    reconstruct.py takes them, on the grid 0, T//S, ... that the sampler then runs on."""
    from monai.networks.schedulers import PNDMScheduler

    from ddpm_ood.diffusion.ddpm import PLMSSampler, ddpm_ood_head_start_points

    pndm = PNDMScheduler(num_train_timesteps=1000, skip_prk_steps=True)
    pndm.set_timesteps(steps)
    expected = [int(t) for t in torch.flip(pndm.timesteps, [0])[1::skip]]
    assert ddpm_ood_head_start_points(steps, skip) == expected
    sampler = PLMSSampler(DDPMSchedule())
    sampler.set_timesteps(steps, offset=0)
    assert sorted(sampler.timesteps.tolist()) == sorted(pndm.timesteps.tolist())
    assert [sampler.index_of(t) for t in expected]  # every start is a point of the grid it runs on


def test_the_papers_start_points_are_unchanged():
    from ddpm_ood.diffusion.ddpm import PLMSSampler, ddpm_ood_head_start_points

    sampler = PLMSSampler(DDPMSchedule())
    sampler.set_timesteps(100)
    assert sampler.grid[sampler.start_indices(16)].tolist() == [1, 161, 321, 481, 641, 801, 961]
    assert ddpm_ood_head_start_points(100, 16) == [10, 170, 330, 490, 650, 810, 970]
    with pytest.raises(ValueError, match="between 1 and the number of grid points less one"):
        ddpm_ood_head_start_points(10, 10)
