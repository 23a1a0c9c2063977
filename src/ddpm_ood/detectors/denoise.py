"""The denoising-error baseline: how well the model predicts the noise added to the image.

At L timesteps t_l = l * (T // L) (l = 0..L-1; L = 10 by default), noise the image with seeded
noise e (the same seeding as the reconstructions: one generator per (seed, the image's pixels, t)) and
measure the training loss of that one sample:

    denoise_mse_t = mean over pixels of (eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) e, t) - e)^2

one UNet call per t (all L in one batch). Score ``denoise``: as the paper does with its
reconstruction errors, each t is z-scored with the fit set's mean and std (ddof = 1, the one
z-score of ddpm_ood.metrics.scoring) and the score is the mean over t.
"""
from __future__ import annotations

import torch

from ddpm_ood.detectors.base import ZScoredFeatureDetector, at_every_timestep, checked_draws, draws_setting
from ddpm_ood.diffusion.reconstruction import NOISE


class DenoiseDetector(ZScoredFeatureDetector):
    name = "denoise"
    knob = "denoise_levels"
    score_names = ("denoise",)

    column_prefix = "denoise_mse_t"

    def __init__(self, n_levels: int = 10, num_timesteps: int = 1000, timesteps=None, noise: str = NOISE,
                 noise_draws: int = 1):
        super().__init__(n_levels, num_timesteps, timesteps, noise)
        self.noise_draws = checked_draws(noise_draws, self.name)  # the error is their mean

    @classmethod
    def from_args(cls, args, model) -> "DenoiseDetector":
        detector = super().from_args(args, model)
        detector.noise_draws = checked_draws(getattr(args, "noise_draws", 1), cls.name)
        return detector

    def settings(self) -> dict:
        return {**super().settings(), **draws_setting(self.noise_draws)}

    @classmethod
    def from_settings(cls, settings: dict) -> "DenoiseDetector":
        detector = super().from_settings(settings)
        detector.noise_draws = checked_draws(settings.get("noise_draws", 1), cls.name)
        return detector

    def nfe(self) -> int:
        return self.noise_draws * len(self.timesteps)

    @torch.no_grad()
    def features(self, model, schedule, x0, image_keys, seed):
        from ddpm_ood.diffusion.reconstruction import start_noise

        n_levels, batch = len(self.timesteps), x0.shape[0]
        x, t = at_every_timestep(x0, self.timesteps)
        error = 0.0
        for draw in range(self.noise_draws):
            noise = start_noise(x0.shape[1:], seed, image_keys, self.timesteps, draw,
                                schedule.noise).to(x0.device)  # (B, L, C, H, W)
            noise = noise.transpose(0, 1).reshape(n_levels * batch, *x0.shape[1:])  # level-major
            x_t = schedule.add_noise(x, noise, t)
            error = error + ((model(x_t, t).double() - noise.double()) ** 2).flatten(1).mean(1).reshape(n_levels, batch)
        error = error / self.noise_draws
        return {column: error[level] for level, column in enumerate(self.columns())}
