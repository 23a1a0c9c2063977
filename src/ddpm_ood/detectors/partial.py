"""Partial diffusion with a one-pass x0 prediction (pDDPM / cDDPM, Behrendt et al.): the brain-MRI
field's low-cost way to say *where* an image is unusual.

At a few timesteps t (cDDPM's 250, 500 and 750 by default; ``--partial_t``), noise the image with
seeded noise e (the reconstructions' seeding, and the model's own noise: simplex noise for a model
trained with it, as AnoDDPM and pDDPM use), and predict the clean image in one network call:

    x0_hat_t = (x_t - sqrt(1 - a_t) eps_theta(x_t, t)) / sqrt(a_t),   x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e

decoded to image space (a latent model's first stage) and clamped to [0, 1]. Its residual
|x0 - x0_hat_t| is the map (cDDPM averages the maps over t), and its mean over pixels the feature
``partial_l1_t<t>``. One UNet call per t (all in one batch): 3 by default.

Score ``partial``: each t z-scored with the fit set's mean and std (ddof = 1), the mean over t, as
the paper's score treats its reconstruction errors. Score ``partial-p99``, the map's own image score
(pDDPM / cDDPM's scan-level use of the map, for lesions too small to move a mean): per t, the 99th
percentile of the residual map (mean over channels) after a median filter of 5 pixels (voxels), as
the localisation metrics post-process the maps (``partial_p99_t<t>``); z-scored and averaged the same
way. ``reconstruct.py --save_maps N`` keeps the
x0 predictions as this detector's examples (``ood/partial/examples_<set>.npz``, in the
reconstruction examples' layout), from which ``ood_detection.py`` draws and measures its maps.
"""
from __future__ import annotations

import numpy as np
import torch

from ddpm_ood.detectors.base import ZScoredFeatureDetector, at_every_timestep, checked_timesteps
from ddpm_ood.diffusion.reconstruction import NOISE, image_keys, start_noise, to_image, to_model

DEFAULT_T = (250, 500, 750)  # cDDPM's; pDDPM's single one is 500


def parse_timesteps(text: str, num_timesteps: int) -> list[int]:
    """--partial_t '250,500,750' -> [250, 500, 750], each between 1 and T - 1."""
    try:
        values = checked_timesteps([int(v) for v in str(text).split(",")])
    except ValueError:
        values = []
    if not values or not all(1 <= t < num_timesteps for t in values):
        raise ValueError(f"expected increasing timesteps between 1 and {num_timesteps - 1}, e.g. 250,500,750; got "
                         f"{text!r}")
    return values


MAP_SCORE = "p99_median5"  # recorded in the settings: results made before the map score lack its columns


class PartialDetector(ZScoredFeatureDetector):
    name = "partial"
    knob = "partial_t"
    score_names = ("partial", "partial-p99")

    column_prefix = "partial_l1_t"
    map_prefix = "partial_p99_t"

    def __init__(self, n_levels: int = 3, num_timesteps: int = 1000, timesteps=None, noise: str = NOISE):
        super().__init__(n_levels, num_timesteps, DEFAULT_T if timesteps is None else timesteps, noise)
        self.space = None  # the model's space, set when measuring (the residual is taken in image space)

    @classmethod
    def from_args(cls, args, model) -> "PartialDetector":
        from ddpm_ood.utils.errors import DataError

        text, steps = getattr(args, cls.knob), model.schedule.num_timesteps
        try:
            return cls(timesteps=parse_timesteps(text, steps))
        except ValueError as err:
            raise DataError(f"--{cls.knob} {text}: {err} (the model has {steps} timesteps).") from None

    def columns(self) -> list[str]:
        return [f"{prefix}{t}" for prefix in (self.column_prefix, self.map_prefix) for t in self.timesteps]

    def settings(self) -> dict:
        return {**super().settings(), "map_score": MAP_SCORE}

    @classmethod
    def from_settings(cls, settings: dict) -> "PartialDetector":
        if settings.get("map_score") != MAP_SCORE:
            from ddpm_ood.utils.errors import ScoringError

            raise ScoringError("These partial results were made before its map score (partial-p99) and lack its "
                               "columns: re-run reconstruct.py --detectors partial --restart.")
        return super().from_settings(settings)

    def score_features(self, fitted, features: np.ndarray) -> dict[str, np.ndarray]:
        """``partial``: the mean z-score of the L1 residuals over t; ``partial-p99``: of the maps' 99th
        percentiles."""
        import pandas as pd

        z = fitted.apply(pd.DataFrame(features, columns=self.columns()), self.columns()).to_numpy()
        levels = len(self.timesteps)
        return {"partial": z[:, :levels].mean(axis=1), "partial-p99": z[:, levels:].mean(axis=1)}

    def measure(self, model, images, filenames, split_type, batch_size, seed, progress=True, index_offset=0):
        self.space = model.space
        return super().measure(model, images, filenames, split_type, batch_size, seed, progress, index_offset)

    @torch.no_grad()
    def predictions(self, model, schedule, x0: torch.Tensor, keys, seed: int) -> torch.Tensor:
        """(B, L, C, *spatial): each image's x0 prediction from each t, in image space, clamped to [0, 1]
        (``x0`` in model space)."""
        n_levels, batch = len(self.timesteps), x0.shape[0]
        x, t = at_every_timestep(x0, self.timesteps)
        noise = start_noise(x0.shape[1:], seed, keys, self.timesteps, 0, schedule.noise).to(x0.device)
        noise = noise.transpose(0, 1).reshape(n_levels * batch, *x0.shape[1:])  # level-major, as x and t
        x_t = schedule.add_noise(x, noise, t)
        sqrt_a = torch.as_tensor(schedule.sqrt_alphas_cumprod, device=x0.device)[t].reshape(-1, *[1] * (x0.dim() - 1))
        sqrt_1m_a = torch.as_tensor(schedule.sqrt_one_minus_alphas_cumprod,
                                    device=x0.device)[t].reshape(-1, *[1] * (x0.dim() - 1))
        x0_hat = ((x_t.double() - sqrt_1m_a * model(x_t, t).double()) / sqrt_a).to(x0.dtype)
        images = to_image(x0_hat, self.space).clamp(0, 1)
        return images.reshape(n_levels, batch, *images.shape[1:]).transpose(0, 1)

    def features(self, model, schedule, x0, image_keys, seed):
        inputs = to_image(x0, self.space)
        residual = (self.predictions(model, schedule, x0, image_keys, seed).double() - inputs[:, None].double()).abs()
        l1 = residual.flatten(2).mean(2)  # (B, L)
        p99 = map_percentile(residual.mean(dim=2))  # (B, L): of each map, mean over channels
        levels = len(self.timesteps)
        return {column: (l1 if i < levels else p99)[:, i % levels] for i, column in enumerate(self.columns())}

    def examples(self, model, images: torch.Tensor, seed: int) -> dict:
        """The first images and their x0 predictions from every t, as the results were made: the
        reconstruction examples' layout (``reconstructions`` (N, L, C, *spatial)), so the maps are drawn
        and measured the same way."""
        self.space = model.space
        x0 = to_model(images.to(model.device), model.space)
        recon = self.predictions(model.model_fn, model.schedule, x0, image_keys(images, self.noise), seed)
        return {"inputs": images.cpu().numpy(), "reconstructions": recon.cpu().numpy(),
                "t": np.asarray(self.timesteps)}


def map_percentile(maps: torch.Tensor, q: float = 0.99) -> torch.Tensor:
    """(B, L, *spatial) maps -> (B, L): the ``q`` quantile of each after a median filter of
    MEDIAN_SIZE over its spatial axes (``ddpm_ood.metrics.localisation.postprocess``'s, without a brain
    mask: a new image has none), so that one odd pixel does not make the score."""
    from scipy import ndimage

    from ddpm_ood.metrics.localisation import MEDIAN_SIZE

    values = maps.detach().cpu().numpy()
    size = (1, 1) + (MEDIAN_SIZE,) * (values.ndim - 2)
    smoothed = ndimage.median_filter(values, size=size)
    return torch.from_numpy(np.quantile(smoothed.reshape(*values.shape[:2], -1), q, axis=-1))
