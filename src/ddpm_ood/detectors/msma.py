"""MSMA (Mahmood, Lopez and Lindsay, "Multiscale score matching for out-of-distribution
detection", ICLR 2021): the norms of the model's score at several noise levels, evaluated at
the *clean* image (no noise added, as in the paper), fitted with a Gaussian mixture.

MSMA used a variance-exploding model, whose input at noise level sigma is x + sigma z, and fed
it x itself. For our variance-preserving DDPM the noise-free input at level t is the mean of
q(x_t | x_0), sqrt(a_t) x0 (a_t = alphas_cumprod[t]), and the score there is
-eps_theta / sqrt(1 - a_t). So, at L levels t_l = l * (T // L) (l = 0..L-1; L = 10 by default):

    score_norm_t = || eps_theta(sqrt(a_t) x0, t) ||_2 / sqrt(1 - a_t)

one UNet call per level (all L in one batch). Score ``msma``: the negative log-likelihood of the
L norms under a Gaussian mixture fitted on the fit set.
"""
from __future__ import annotations

import numpy as np
import torch

from ddpm_ood.detectors.base import FeatureDetector, at_every_timestep
from ddpm_ood.detectors.density import density_from_state, density_state, fit_gmm, ood_score


class MSMADetector(FeatureDetector):
    name = "msma"
    knob = "msma_levels"
    score_names = ("msma",)

    column_prefix = "score_norm_t"

    @torch.no_grad()
    def features(self, model, schedule, x0, image_keys, seed):
        ab = torch.from_numpy(schedule.alphas_cumprod[self.timesteps]).to(x0.device)  # (L,) float64
        x, t = at_every_timestep(x0, self.timesteps)  # (L*B, C, H, W), level-major
        scale = ab.sqrt().to(x0.dtype).repeat_interleave(x0.shape[0]).reshape(-1, *([1] * (x0.dim() - 1)))
        eps = model(x * scale, t).double().reshape(len(self.timesteps), x0.shape[0], -1)  # (L, B, D)
        norms = eps.norm(dim=2) / (1 - ab).sqrt()[:, None]  # (L, B)
        return {column: norms[level] for level, column in enumerate(self.columns())}

    def fit_features(self, features: np.ndarray, seed: int = 0):
        return fit_gmm(features, seed, "msma")

    def score_features(self, fitted, features: np.ndarray) -> dict[str, np.ndarray]:
        return {"msma": ood_score(fitted, features)}

    def fit_state(self, fitted) -> dict:
        return density_state(fitted)

    def load_fit(self, state: dict):
        return density_from_state(state)
