"""Models whose eps is known in closed form: the oracle cases of the sampler and the detectors."""
from __future__ import annotations

import torch

from ddpm_ood.diffusion.ddpm import DDPMSchedule


def point_mass_oracle(schedule: DDPMSchedule, c: torch.Tensor):
    """For data that is the single point c, the exact eps is (x_t - sqrt(ab_t) c) / sqrt(1 - ab_t)."""
    ab = torch.from_numpy(schedule.alphas_cumprod)

    def model(x, t):
        a = ab[t.long()].to(x.dtype).reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    return model


def gaussian_oracle(schedule: DDPMSchedule, variance: float = 1.0):
    """The exact eps of N(0, variance I) data: x_t ~ N(0, (a v + 1 - a) I), so
    eps(x, t) = -sqrt(1 - a) * score = sqrt(1 - a) x / (a v + 1 - a)."""
    ab = torch.from_numpy(schedule.alphas_cumprod)

    def model(x, t):
        a = ab[t.long()].to(x.dtype).reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * variance + 1 - a)

    return model
