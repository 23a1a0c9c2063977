"""Schedule values, the PLMS grid, PLMS against the published formulas, and the oracle test."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_ood.diffusion.ddpm import DDPMSchedule, PLMSSampler, plms_grid
from helpers.oracles import point_mass_oracle


def test_linear_schedule_is_linear_in_sqrt_beta_at_both_ends():
    s = DDPMSchedule(1000, "linear", 0.0015, 0.0195)
    assert s.betas[0] == pytest.approx(0.0015, rel=1e-12)
    assert s.betas[-1] == pytest.approx(0.0195, rel=1e-12)
    step = (0.0195**0.5 - 0.0015**0.5) / 999
    assert s.betas[1] == pytest.approx((0.0015**0.5 + step) ** 2, rel=1e-12)
    assert s.alphas_cumprod[0] == pytest.approx(1 - 0.0015, rel=1e-12)
    assert s.alphas_cumprod[-1] == pytest.approx(np.prod([1 - b for b in s.betas]), rel=1e-9)
    assert 0 < s.alphas_cumprod[-1] < 1e-3  # nearly pure noise at t = 999
    assert s.betas.dtype == np.float64


def test_plain_linear_and_unknown_schedule():
    s = DDPMSchedule(10, "plain_linear", 0.1, 0.2)
    np.testing.assert_allclose(s.betas, np.linspace(0.1, 0.2, 10))
    with pytest.raises(ValueError, match="cosine"):
        DDPMSchedule(10, "cosine", 0.1, 0.2)


def test_add_noise_closed_form():
    s = DDPMSchedule()
    x0 = torch.arange(8.0).reshape(2, 1, 2, 2) / 8
    noise = torch.ones_like(x0)
    t = torch.tensor([0, 999])
    out = s.add_noise(x0, noise, t)
    for i, ti in enumerate([0, 999]):
        ab = s.alphas_cumprod[ti]
        torch.testing.assert_close(out[i], (ab**0.5 * x0[i] + (1 - ab) ** 0.5).float())
    # With a schedule that adds no noise at t = 0, add_noise at t = 0 returns x0.
    clean = DDPMSchedule(1000, "plain_linear", 0.0, 0.02)
    torch.testing.assert_close(clean.add_noise(x0, noise, torch.tensor([0, 0])), x0)


def test_plms_grid_literal():
    assert plms_grid(100)[:4].tolist() == [1, 11, 21, 31]
    assert plms_grid(100)[-1] == 991 and len(plms_grid(100)) == 100
    assert plms_grid(50).tolist() == list(range(1, 1000, 20))
    assert plms_grid(1).tolist() == [1]
    assert plms_grid(3).tolist() == [1, 334, 667]  # 1000 would be past the last timestep
    with pytest.raises(ValueError):
        plms_grid(0)


def test_start_points_match_the_readme_table():
    sampler = PLMSSampler(DDPMSchedule())
    sampler.set_timesteps(100)
    assert sampler.grid[sampler.start_indices(16)].tolist() == [1, 161, 321, 481, 641, 801, 961]
    table = {1: 100, 2: 50, 3: 34, 4: 25, 5: 20, 8: 13, 16: 7, 32: 4, 64: 2}
    assert {k: len(sampler.start_indices(k)) for k in table} == table
    for bad in (0, 101):
        with pytest.raises(ValueError, match="inference_skip_factor"):
            sampler.start_indices(bad)


def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """diffusers' test model: eps = x * t / (t + 1)."""
    t = t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return x * t / (t + 1)


def reference_plms(x: np.ndarray, start: int, n_steps: int, alphas_cumprod: np.ndarray) -> np.ndarray:
    """latent-diffusion's PLMS written out from the formulas, in float64, for one trajectory."""
    c = 1000 // n_steps
    grid = np.arange(0, 1000, c) + 1
    a = alphas_cumprod[grid]
    a_prev = np.concatenate([[alphas_cumprod[0]], alphas_cumprod[grid[:-1]]])
    eps_fn = lambda x, t: x * t / (t + 1)

    def ddim(e, k, x):
        x0 = (x - np.sqrt(1 - a[k]) * e) / np.sqrt(a[k])
        return np.sqrt(a_prev[k]) * x0 + np.sqrt(1 - a_prev[k]) * e

    old = []
    for k in range(start, -1, -1):
        e = eps_fn(x, grid[k])
        if not old:
            e_next = eps_fn(ddim(e, k, x), grid[max(k - 1, 0)])
            e_prime = (e + e_next) / 2
        elif len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = ddim(e_prime, k, x)
        old.append(e)
        old = old[-3:]
    return x


@pytest.mark.parametrize("start", [0, 1, 2, 3, 9])
def test_plms_loop_matches_reference_formulas(start):
    schedule = DDPMSchedule()
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(10)
    x0 = (torch.arange(12, dtype=torch.float32).reshape(3, 1, 2, 2) - 6) / 6
    x, history = x0.clone(), []
    for t in sampler.trajectory(start):
        eps = fake_model(x, torch.full((3,), t))
        x, history = sampler.step(eps, t, x, history, fake_model)
    expected = reference_plms(x0.double().numpy(), start, 10, schedule.alphas_cumprod)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_one_step_trajectory_corrector_evaluates_at_its_own_t():
    """From t = 1 there is no lower grid point: the predictor is evaluated at t = 1 again."""
    sampler = PLMSSampler(DDPMSchedule())
    sampler.set_timesteps(100)
    seen = []

    def recording_model(x, t):
        seen.append(t.tolist())
        return torch.zeros_like(x)

    x = torch.zeros(2, 1, 2, 2)
    sampler.step(recording_model(x, torch.full((2,), 1)), 1, x, [], recording_model)
    assert seen == [[1, 1], [1, 1]]


def test_first_step_corrector_uses_the_next_grid_point():
    sampler = PLMSSampler(DDPMSchedule())
    sampler.set_timesteps(100)
    seen = []
    model = lambda x, t: seen.append(int(t[0])) or torch.zeros_like(x)
    sampler.step(torch.zeros(1, 1, 2, 2), 161, torch.zeros(1, 1, 2, 2), [], model)
    assert seen == [151]


def test_history_is_owned_by_the_caller_and_capped_at_three():
    sampler = PLMSSampler(DDPMSchedule())
    sampler.set_timesteps(10)
    x, history = torch.ones(1, 1, 2, 2), []
    for t in sampler.trajectory(6):
        x, new_history = sampler.step(fake_model(x, torch.tensor([t])), t, x, history, fake_model)
        assert new_history is not history and len(new_history) == min(len(history) + 1, 3)
        history = new_history


def test_step_rejects_off_grid_timestep_and_unset_grid():
    sampler = PLMSSampler(DDPMSchedule())
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sampler.trajectory(0)
    sampler.set_timesteps(100)
    with pytest.raises(ValueError, match="not on the PLMS grid"):
        sampler.step(torch.zeros(1), 5, torch.zeros(1), [torch.zeros(1)])


@pytest.mark.parametrize("skip", [1, 7])
def test_oracle_reconstruction_returns_the_point_from_every_start(skip):
    """Every trajectory of two or more steps returns the point exactly. The one-step
    trajectory from t = 1 evaluates its corrector at t = 1 on a sample already at the t = 0
    level (as the paper's code did), so it is off by that: checked in the next test."""
    from ddpm_ood.diffusion.reconstruction import reconstruct_fused, reconstruct_sequential, start_noise

    # A schedule with alphas_cumprod[0] = 1, so the final step lands exactly on the data.
    schedule = DDPMSchedule(1000, "plain_linear", 0.0, 0.02)
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(20)
    c = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    x0 = c.repeat(3, 1, 1, 1)
    starts = sampler.start_indices(skip)
    noise = start_noise((1, 4, 4), 0, [0, 1, 2], sampler.grid[starts])
    for reconstruct in (reconstruct_sequential, reconstruct_fused):
        out = reconstruct(point_mass_oracle(schedule, c), schedule, sampler, x0, starts, noise)
        assert starts[0] == 0
        torch.testing.assert_close(out[:, 1:], c[:, None].expand_as(out[:, 1:]), atol=2e-5, rtol=0)


def test_oracle_one_step_trajectory_follows_the_papers_corrector():
    from ddpm_ood.diffusion.reconstruction import reconstruct_fused, start_noise

    schedule = DDPMSchedule()
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(100)
    c = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4).double()
    eps = start_noise((1, 4, 4), 0, [0], [1])[:, 0].double()
    ab0, ab1 = schedule.alphas_cumprod[0], schedule.alphas_cumprod[1]
    # Predictor lands at the alphas_cumprod[0] level; the oracle is then asked for eps at t = 1.
    x1 = ab1**0.5 * c + (1 - ab1) ** 0.5 * eps
    x_pred = ab0**0.5 * c + (1 - ab0) ** 0.5 * eps
    eps_next = (x_pred - ab1**0.5 * c) / (1 - ab1) ** 0.5
    eps_prime = (eps + eps_next) / 2
    pred_x0 = (x1 - (1 - ab1) ** 0.5 * eps_prime) / ab1**0.5
    expected = ab0**0.5 * pred_x0 + (1 - ab0) ** 0.5 * eps_prime
    out = reconstruct_fused(point_mass_oracle(schedule, c.float()), schedule, sampler, c.float(), [0], eps[:, None].float())
    torch.testing.assert_close(out[:, 0], expected.float(), atol=1e-5, rtol=0)


def test_oracle_with_paper_schedule_ends_at_alphas_cumprod_0():
    """With the paper's schedule the last step goes to alphas_cumprod[0], not to 1: the result is
    sqrt(ab_0) c + sqrt(1 - ab_0) eps, eps being the start noise (a point mass keeps its eps)."""
    from ddpm_ood.diffusion.reconstruction import reconstruct_fused, start_noise

    schedule = DDPMSchedule()
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(100)
    c = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
    starts = sampler.start_indices(16)
    noise = start_noise((1, 4, 4), 0, [0], sampler.grid[starts])
    out = reconstruct_fused(point_mass_oracle(schedule, c), schedule, sampler, c, starts, noise)
    ab0 = schedule.alphas_cumprod[0]
    expected = (ab0**0.5 * c[:, None] + (1 - ab0) ** 0.5 * noise).float()
    torch.testing.assert_close(out[:, 1:], expected[:, 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_steps", [50, 100])
def test_sampling_gaussian_data_with_its_exact_eps_recovers_the_gaussian(n_steps):
    """For data ~ N(mu, sigma^2) the exact eps is sqrt(1 - ab)(x - sqrt(ab) mu) / (ab sigma^2 + 1 - ab).
    PLMS from the top of the grid must then land on N(sqrt(ab_0) mu, ab_0 sigma^2 + 1 - ab_0)."""
    schedule = DDPMSchedule()
    ab = torch.from_numpy(schedule.alphas_cumprod)
    mu, sigma = 0.5, 0.2

    def model(x, t):
        a = ab[t.long()].reshape(-1, 1, 1, 1)
        return ((1 - a).sqrt() * (x - a.sqrt() * mu) / (a * sigma**2 + 1 - a)).float()

    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(n_steps)
    top = len(sampler.grid) - 1
    a_top = ab[sampler.grid[top]]
    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (a_top.sqrt() * mu + (a_top * sigma**2 + 1 - a_top).sqrt() * noise).float()
    history = []
    for t in sampler.trajectory(top):
        x, history = sampler.step(model(x, torch.full((len(x),), t)), t, x, history, model)
    a0 = schedule.alphas_cumprod[0]
    assert x.mean().item() == pytest.approx(a0**0.5 * mu, abs=0.01)
    assert x.std().item() == pytest.approx((a0 * sigma**2 + 1 - a0) ** 0.5, abs=0.01)


def test_adams_bashforth_rows_and_the_published_weights():
    """The one multistep combination: scalar weights (one trajectory) and per-row weights (the
    fused loop) give PNDM's (55e - 59e1 + 37e2 - 9e3) / 24 and its lower orders."""
    from ddpm_ood.diffusion.ddpm import ADAMS_BASHFORTH, adams_bashforth

    e, e1, e2, e3 = (torch.full((3, 1, 2, 2), v) for v in (1.0, 2.0, 4.0, 8.0))
    expected = {1: 1.0, 2: (3 * 1 - 2) / 2, 3: (23 - 16 * 2 + 5 * 4) / 12, 4: (55 - 59 * 2 + 37 * 4 - 9 * 8) / 24}
    for order, value in expected.items():
        row = ADAMS_BASHFORTH[order - 1]
        torch.testing.assert_close(adams_bashforth(e, [e1, e2, e3][:order - 1], row), torch.full_like(e, value))
    per_row = torch.from_numpy(ADAMS_BASHFORTH[[1, 2, 3]]).float()  # rows at orders 2, 3, 4
    combined = adams_bashforth(e, torch.stack([e1, e2, e3]), per_row)
    torch.testing.assert_close(combined[:, 0, 0, 0], torch.tensor([expected[2], expected[3], expected[4]]))
