"""Tiny diffusers models and the 16x16 colour images they take."""
from __future__ import annotations

import numpy as np
import torch

from conftest import write_split


def tiny_unet(seed: int = 0, out_channels: int = 3):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)


def scheduler(**config):
    import diffusers

    return diffusers.DDPMScheduler(**{"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                                      "beta_schedule": "linear", **config})


def colour_split(folder, name, n, seed, kind):
    """n 16x16 RGB .npy images ('blobs' or 'stripes') and their split CSV, folder/../<name>.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    files = []
    for i in range(n):
        if kind == "blobs":
            image = 255 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / (2 * rng.uniform(2, 5) ** 2))[None].repeat(3, 0)
        else:
            image = 255.0 * ((xx // rng.integers(2, 4)) % 2)[None].repeat(3, 0)
        files.append(folder / f"{name}_{i}.npy")
        np.save(files[-1], np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
    return write_split(folder.parent / f"{name}.csv", files)
