"""Multi-start reconstruction: noise each image to several start points t, denoise each back
to t = 0 with PLMS, and return every reconstruction.

Two implementations with the same result (to float32 rounding):

- :func:`reconstruct_sequential`: one trajectory at a time, each its own loop of batch-B model
  calls with its own eps history. The plain reference, kept for tests and benchmarks.
- :func:`reconstruct_fused`: all trajectories of a batch advance together. At grid index k
  every trajectory that has started sits at the same timestep ``grid[k]``, so one model call
  covers all of them (up to B x K images); the trajectories starting at k add one extra call,
  the first-step corrector. Each trajectory keeps its own eps history (rows of one tensor).

The start noise of each (image, start t) comes from a generator seeded by (seed, a hash of what
the image shows, t), so results do not depend on batch size, on the implementation, on how work is
split, or on where an image stands and what comes with it. "What the image shows" is its pixels
at 8-bit precision (``pixels-u8-sha256``): a change below half a grey level (float rounding, a
re-save) keeps the noise, and the score. Results made with the earlier scheme (``pixels-sha256``:
the float32 bytes) record it in their manifests, and new images are measured as they were.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ddpm_ood.diffusion.ddpm import ADAMS_BASHFORTH, DDPMSchedule, ModelFn, PLMSSampler, adams_bashforth
from ddpm_ood.metrics.distances import mse_per_image


NOISE = "pixels-u8-sha256"  # how the noise is seeded, recorded in every results manifest ("noise")
NOISE_SCHEMES = ("pixels-u8-sha256", "pixels-sha256")  # the current one; the one before (float32 bytes)


def image_keys(images: torch.Tensor, noise: str = NOISE) -> list[int]:
    """Each image's noise key: 128 bits of the SHA-256 of what it shows, its pixels in [0, 1] at
    8-bit precision (and its shape). The noise an image gets depends on the image alone: not on
    where it stands in its set or batch, nor on what comes with it (a duplicate gets the same noise,
    hence the same score), nor on float rounding. ``noise="pixels-sha256"``: the earlier keys, of
    the float32 bytes, for results made with them."""
    if noise not in NOISE_SCHEMES:
        raise ValueError(f"unknown noise scheme {noise!r}; known: {NOISE_SCHEMES}")
    pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
    if noise == "pixels-u8-sha256":
        shown = lambda image: np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8).tobytes() + str(image.shape).encode()
    else:
        shown = lambda image: image.tobytes()
    return [int.from_bytes(hashlib.sha256(shown(pixels[i])).digest()[:16], "little") for i in range(len(pixels))]


def noise_seed(seed: int, image_key: int, timestep: int, draw: int = 0) -> int:
    """A 64-bit generator seed for one (image, t) and noise draw, well mixed by numpy's SeedSequence
    (draw 0 is the one every result has; further draws average it, --noise_draws)."""
    entropy = [seed, image_key, timestep] + ([draw] if draw else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def start_noise(image_shape: Sequence[int], seed: int, keys: Sequence[int], timesteps: Sequence[int],
                draw: int = 0, kind=None) -> torch.Tensor:
    """Noise of shape (B, K, *image_shape) for B images (their ``image_keys``) and K timesteps (on CPU):
    Gaussian, or ``kind`` (a schedule's ``noise``: simplex noise), each from its own seeded generator."""
    noise = torch.empty(len(keys), len(timesteps), *image_shape)
    generator = torch.Generator()
    for b, key in enumerate(keys):
        for k, t in enumerate(timesteps):
            generator.manual_seed(noise_seed(seed, int(key), int(t), draw))
            noise[b, k] = torch.randn(tuple(image_shape), generator=generator) if kind is None else \
                kind.sample((1, *image_shape), torch.tensor([int(t)]), generator)[0]
    return noise


def _noised_starts(schedule: DDPMSchedule, sampler: PLMSSampler, x0: torch.Tensor,
                   start_indices: Sequence[int], noise: torch.Tensor) -> list[torch.Tensor]:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps for each start (one (B, C, H, W) tensor each)."""
    out = []
    for s, j in enumerate(start_indices):
        t = torch.full((x0.shape[0],), int(sampler.grid[j]), device=x0.device)
        out.append(schedule.add_noise(x0, noise[:, s].to(x0.device), t))
    return out


@torch.no_grad()
def reconstruct_sequential(model: ModelFn, schedule: DDPMSchedule, sampler: PLMSSampler, x0: torch.Tensor,
                           start_indices: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
    """Reconstruct (B, C, H, W) images from each start; returns (B, K, C, H, W), not clamped."""
    out = torch.empty(x0.shape[0], len(start_indices), *x0.shape[1:], device=x0.device)
    for s, (j, x) in enumerate(zip(start_indices, _noised_starts(schedule, sampler, x0, start_indices, noise))):
        history: list[torch.Tensor] = []  # this trajectory's own eps history
        for t in sampler.trajectory(int(j)):
            eps = model(x, torch.full((x.shape[0],), t, device=x.device))
            x, history = sampler.step(eps, t, x, history, model)
        out[:, s] = x
    return out


@torch.no_grad()
def reconstruct_fused(model: ModelFn, schedule: DDPMSchedule, sampler: PLMSSampler, x0: torch.Tensor,
                      start_indices: Sequence[int], noise: torch.Tensor) -> torch.Tensor:
    """Same result as :func:`reconstruct_sequential`, advancing all trajectories together."""
    batch, n_starts = x0.shape[0], len(start_indices)
    device = x0.device
    # Rows are grouped by start, latest start first, so the trajectories running at grid
    # index k are always a prefix of the rows: start s runs while k <= start_indices[s].
    order = np.argsort(-np.asarray(start_indices), kind="stable")
    starts_desc = np.asarray(start_indices)[order]
    starts = _noised_starts(schedule, sampler, x0, start_indices, noise)
    x = torch.cat([starts[s] for s in order])  # (K*B, C, H, W)
    history = torch.zeros(3, *x.shape, device=device, dtype=x.dtype)  # newest first, per row

    # Adams-Bashforth weights for every (grid index, start): row min(j - k, 3) of the table;
    # computed up front so the loop below never copies from the host.
    k_max = int(starts_desc[0])
    n_prev = np.clip(starts_desc[None, :] - np.arange(k_max + 1)[:, None], 0, 3)  # (k_max+1, K)
    weights = torch.from_numpy(ADAMS_BASHFORTH[n_prev]).to(device=device, dtype=x.dtype)  # (k_max+1, K, 4)
    timesteps = torch.from_numpy(sampler.grid).to(device)
    n_active_at = np.searchsorted(-starts_desc, -np.arange(k_max + 1), side="right")  # starts with j >= k

    for k in range(k_max, -1, -1):
        rows = int(n_active_at[k]) * batch
        x_k = x[:rows]
        eps = model(x_k, timesteps[k].expand(rows))
        w = weights[k, : rows // batch].repeat_interleave(batch, dim=0)  # (rows, 4): each row its own
        eps_prime = adams_bashforth(eps, history[:, :rows], w)
        if starts_desc[rows // batch - 1] == k:
            # The newest trajectories take their first step: pseudo improved Euler.
            new = slice(rows - batch, rows)
            eps_prime[new] = sampler.first_step_eps(eps[new], k, x_k[new], model, timesteps[max(k - 1, 0)].expand(batch))
        x[:rows] = sampler.ddim_step(eps_prime, k, x_k)
        history[2, :rows] = history[1, :rows]
        history[1, :rows] = history[0, :rows]
        history[0, :rows] = eps
    inverse = np.argsort(order)
    return x.reshape(n_starts, batch, *x0.shape[1:])[inverse].transpose(0, 1)  # (B, K, C, H, W)


def measure_split(model: ModelFn, schedule: DDPMSchedule, sampler: PLMSSampler, images: torch.Tensor,
                  filenames: Sequence[str], split_type: str, start_indices: Sequence[int], batch_size: int,
                  seed: int, device: torch.device, lpips_metric=None, fused: bool = True,
                  progress: bool | Callable[[int], object] = True, index_offset: int = 0,
                  clamp_for_lpips: bool = False, space=None, noise: str = NOISE, draws: int = 1,
                  reconstructed: Callable[[int, int, torch.Tensor], object] | None = None) -> pd.DataFrame:
    """Reconstruct every image from every start and measure MSE (and LPIPS) to the input.

    As the paper's code: MSE compares the input with the reconstruction clamped to [0, 1];
    LPIPS does too for one-channel images, but scores colour images on the *unclamped*
    reconstruction (``clamp_for_lpips`` clamps for colour LPIPS as well).

    ``images[i]`` is image ``index_offset + i`` of its split: that index fills the ``image_index``
    column; its noise comes from its pixels (:func:`image_keys`). ``progress``: True for a progress bar of its own, or a
    function called with the number of images each batch finished (the caller's bar).
    ``space`` (a model space, :class:`ddpm_ood.models.spaces.PixelSpace`): images are encoded to it, noised and
    reconstructed there, and decoded; the images and metrics stay in [0, 1]. None: the images themselves.
    ``noise``: the seeding scheme (:func:`image_keys`); ``draws``: each metric is the mean over that
    many independent noise draws (draw 0 alone by default). ``reconstructed(first, draw, recons)``, if
    given, sees each batch's reconstructions clamped to [0, 1], (B, K, C, *spatial), with the split index
    of its first image: the examples kept without measuring again. Returns one row per (image, start t).
    """
    reconstruct = reconstruct_fused if fused else reconstruct_sequential
    timesteps = [int(sampler.grid[j]) for j in start_indices]
    n_starts = len(timesteps)
    columns: dict[str, list] = {"mse": [], "perceptual_difference": []}
    bar = tqdm(total=len(images), desc=f"reconstructing {split_type}", unit="img", leave=False) if progress is True else None
    advance = bar.update if bar is not None else progress if callable(progress) else lambda n: None
    for first in range(0, len(images), batch_size):
        batch = images[first:first + batch_size]
        x0 = batch.to(device)
        x = to_model(x0, space)  # the noise is drawn in model space, where the sampler runs
        keys = image_keys(batch, noise)
        mse, lpips_values = 0.0, 0.0  # sums over the draws
        for draw in range(draws):
            eps = start_noise(x.shape[1:], seed, keys, timesteps, draw, schedule.noise)
            raw = to_image(reconstruct(model, schedule, sampler, x, start_indices, eps), space)  # (B, K, C, H, W)
            inputs = x0[:, None].expand_as(raw).reshape(-1, *x0.shape[1:])  # (B*K, C, H, W), image-major
            raw = raw.reshape(-1, *x0.shape[1:])
            clamped = raw.clamp(0, 1)
            if reconstructed is not None:
                reconstructed(index_offset + first, draw, clamped.reshape(len(x0), n_starts, *x0.shape[1:]))
            mse = mse + mse_per_image(inputs, clamped).cpu()
            if lpips_metric is not None:
                clamp_lpips = clamp_for_lpips or x0.shape[1] == 1
                lpips_values = lpips_values + lpips_metric(inputs, clamped if clamp_lpips else raw).cpu()
        columns["mse"].append(mse / draws)
        if lpips_metric is not None:
            columns["perceptual_difference"].append(lpips_values / draws)
        advance(len(x0))
    if bar is not None:
        bar.close()
    n_images = len(images)
    mse = torch.cat(columns["mse"]).numpy()
    lpips_values = torch.cat(columns["perceptual_difference"]).numpy() if lpips_metric is not None else np.full(len(mse), np.nan)
    return pd.DataFrame({
        "filename": np.repeat(np.asarray(filenames, dtype=object), n_starts),
        "image_index": np.repeat(np.arange(index_offset, index_offset + n_images), n_starts),
        "type": split_type,
        "t": np.tile(timesteps, n_images),
        "mse": mse,
        "perceptual_difference": lpips_values,
    })


def to_model(images: torch.Tensor, space) -> torch.Tensor:
    """Images in [0, 1] -> the model space ``space`` (None: the images themselves)."""
    return images if space is None else space.encode(images)


def to_image(x: torch.Tensor, space) -> torch.Tensor:
    """The model space -> images in [0, 1] (None: nothing to do)."""
    return x if space is None else space.decode(x)


@torch.no_grad()
def reconstruction_examples(model: ModelFn, schedule: DDPMSchedule, sampler: PLMSSampler, images: torch.Tensor,
                            start_indices: Sequence[int], seed: int, device: torch.device,
                            space=None, noise: str = NOISE, draws: int = 1) -> dict[str, np.ndarray]:
    """The first images of a set and their reconstructions from every start point, exactly as
    the results were made (the same seeded noise): ``inputs`` (N, C, H, W), ``reconstructions``
    (N, K, C, H, W) clamped to [0, 1], ``t`` (K,). With ``draws`` above 1 (--noise_draws), the
    further draws' as ``more_reconstructions`` (N, draws - 1, K, C, H, W): the maps average every
    draw, as the scores do; ``reconstructions`` stays draw 0's (the figures show it)."""
    timesteps = [int(sampler.grid[j]) for j in start_indices]
    x0 = images.to(device)
    x = to_model(x0, space)
    keys = image_keys(images, noise)
    recons = []
    for draw in range(draws):
        eps = start_noise(x.shape[1:], seed, keys, timesteps, draw, kind=schedule.noise)
        recons.append(to_image(reconstruct_fused(model, schedule, sampler, x, start_indices, eps), space)
                      .clamp(0, 1).cpu().numpy())
    examples = {"inputs": x0.cpu().numpy(), "reconstructions": recons[0], "t": np.asarray(timesteps)}
    if draws > 1:
        examples["more_reconstructions"] = np.stack(recons[1:], axis=1)
    return examples
