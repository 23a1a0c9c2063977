"""DiffPath (Heng, Thiery and Soh, "Out-of-distribution detection with a single unconditional
diffusion model", NeurIPS 2024, arXiv 2405.11881): statistics of the deterministic DDIM path
from the image towards noise.

The path. Timesteps t_k = k * (T // K), k = 0..K-1 (K = ``n_steps``, 10 by default: t = 0,
100, ..., 900, improved-diffusion's ``ddim10`` respacing). Starting from the image itself at
x_0 (as DiffPath's ``ddim_reverse_sample_loop``), each step evaluates the model once and moves
one grid point up (Song et al. 2021, eq. 12 run forwards, eta = 0):

    eps_k   = eps_theta(x_k, t_k)
    x0_hat  = (x_k - sqrt(1 - a_k) eps_k) / sqrt(a_k)              a_k = alphas_cumprod[t_k]
    x_{k+1} = sqrt(a_{k+1}) x0_hat + sqrt(1 - a_{k+1}) eps_k        a_K = 0 (the path ends in noise)

so K UNet calls per image. (DiffPath's code may clip x0_hat; this is the unclipped ODE path.)

The statistics (DiffPath's ``save_test_statistics.py``), sums over the K steps and all pixels:
the first-order terms of the path's rate of change, eps itself,

    eps_sum = sum eps,  eps_sum_sq = sum eps^2,  eps_sum_cb = sum eps^3,

and the second-order terms, its curvature, from the finite difference d_k = K (eps_{k+1} - eps_k),
k = 0..K-2,

    deps_dt = sum d,  deps_dt_sq = sum d^2,  deps_dt_cb = sum d^3.

Scores (both the negative log-likelihood of a density fitted on the fit set's statistics):

- ``path-1d``: sqrt(deps_dt_sq), the curvature's norm (DiffPath-1D, a KDE);
- ``path-6d``: all six statistics (DiffPath-6D, a Gaussian mixture), the main score.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ddpm_ood.detectors.base import FeatureDetector, ModelFn
from ddpm_ood.detectors.density import density_from_state, density_state, fit_gmm, fit_kde, ood_score
from ddpm_ood.diffusion.reconstruction import NOISE

STATISTICS = ("eps_sum", "eps_sum_sq", "eps_sum_cb", "deps_dt", "deps_dt_sq", "deps_dt_cb")


@torch.no_grad()
def ddim_inversion(model: ModelFn, alphas_cumprod: np.ndarray, x0: torch.Tensor,
                   timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM path from ``x0`` (B, C, H, W) up through ``timesteps``: returns the model's eps at
    every point, (K, B, C, H, W), and the points x_0..x_K, (K+1, B, C, H, W)."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)[list(timesteps)]
    ab_next = np.append(ab[1:], 0.0)
    x, points, eps_all = x0, [x0], []
    for k, t in enumerate(timesteps):
        eps = model(x, torch.full((x.shape[0],), int(t), device=x.device))
        x0_hat = (x - float(np.sqrt(1 - ab[k])) * eps) / float(np.sqrt(ab[k]))
        x = float(np.sqrt(ab_next[k])) * x0_hat + float(np.sqrt(1 - ab_next[k])) * eps
        eps_all.append(eps)
        points.append(x)
    return torch.stack(eps_all), torch.stack(points)


def path_statistics(eps: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiffPath's six statistics of a path's eps, (K, B, C, H, W) -> six (B,) float64 tensors."""
    eps = eps.double().transpose(0, 1).flatten(2)  # (B, K, D)
    diff = torch.diff(eps, dim=1) * eps.shape[1]  # (B, K-1, D): d_k = K (eps_{k+1} - eps_k)
    return {"eps_sum": eps.sum((1, 2)), "eps_sum_sq": (eps ** 2).sum((1, 2)), "eps_sum_cb": (eps ** 3).sum((1, 2)),
            "deps_dt": diff.sum((1, 2)), "deps_dt_sq": (diff ** 2).sum((1, 2)), "deps_dt_cb": (diff ** 3).sum((1, 2))}


class PathDetector(FeatureDetector):
    name = "path"
    knob = "path_steps"
    score_names = ("path-6d", "path-1d")

    def __init__(self, n_steps: int = 10, num_timesteps: int = 1000, timesteps=None, noise: str = NOISE):
        if (n_steps if timesteps is None else len(timesteps)) < 2:
            raise ValueError(f"the path needs at least 2 steps for its curvature, got "
                             f"{n_steps if timesteps is None else list(timesteps)}")
        super().__init__(n_steps, num_timesteps, timesteps, noise)

    def columns(self) -> list[str]:
        return list(STATISTICS)

    def features(self, model, schedule, x0, image_keys, seed):
        eps, _ = ddim_inversion(model, schedule.alphas_cumprod, x0, self.timesteps)
        return path_statistics(eps)

    def fit_features(self, features: np.ndarray, seed: int = 0):
        return {"path-6d": fit_gmm(features, seed, "path-6d"),
                "path-1d": fit_kde(np.sqrt(features[:, STATISTICS.index("deps_dt_sq")]), seed, "path-1d")}

    def score_features(self, fitted, features: np.ndarray) -> dict[str, np.ndarray]:
        return {"path-6d": ood_score(fitted["path-6d"], features),
                "path-1d": ood_score(fitted["path-1d"], np.sqrt(features[:, STATISTICS.index("deps_dt_sq")]))}

    def fit_state(self, fitted: dict) -> dict:
        return {name: density_state(pipeline) for name, pipeline in fitted.items()}

    def load_fit(self, state: dict) -> dict:
        return {name: density_from_state(part) for name, part in state.items()}
