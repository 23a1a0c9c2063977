"""Models whose eps is known in closed form: the oracle cases of the sampler and the detectors; and the tiny
UNet with weights that the reconstruction tests run."""
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


def tiny_unet_with_weights():
    """The tiny config's UNet (seed 0) and schedule, its zero-initialised last layers given weights so that
    eps is not 0 and reconstruction tests have teeth."""
    from conftest import TINY_CONFIG
    from ddpm_ood.models.config import build_schedule, build_unet, load_config

    cfg = load_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = build_unet(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.05)
    return model, build_schedule(cfg)
