"""What a feature detector is: a few UNet calls per image give a fixed set of numbers
(features); a fit on in-distribution images that are not test images turns them into scores.

A detector is a small object:

- ``name`` and ``score_names`` (its scores, the first one its main score), ``primary``;
- ``settings()``: what its features depend on (recorded in every results manifest);
- ``nfe()``: UNet evaluations per image;
- ``features(model, schedule, x0, image_ids, seed)``: ``{column: (B,) tensor}`` for a batch;
- ``fit(features)`` on the fit set's (N, F) features, and ``score(fitted, features)`` ->
  ``{score name: (N,) array}``, higher = more OOD.

:func:`measure_features` runs any detector over a set's images in batches.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FeatureDetector:
    name: str = ""
    score_names: tuple[str, ...] = ()

    @property
    def primary(self) -> str:
        """The detector's main score (the one the combination uses)."""
        return self.score_names[0]

    column_prefix: str = ""  # one feature column per timestep, <prefix><t>, unless columns() says otherwise

    def __init__(self, n_levels: int = 10, num_timesteps: int = 1000):
        self.timesteps = even_timesteps(num_timesteps, n_levels)  # one UNet call per image at each

    def columns(self) -> list[str]:
        return [f"{self.column_prefix}{t}" for t in self.timesteps]

    def settings(self) -> dict:
        """What the features depend on besides the model: recorded in every results manifest."""
        return {f"{self.name}_t": list(self.timesteps)}

    @classmethod
    def from_settings(cls, settings: dict) -> "FeatureDetector":
        """The detector that wrote results with this manifest."""
        detector = cls.__new__(cls)
        detector.timesteps = [int(t) for t in settings[f"{cls.name}_t"]]
        return detector

    def nfe(self) -> int:
        """UNet evaluations per image."""
        return len(self.timesteps)

    def features(self, model: ModelFn, schedule, x0: torch.Tensor, image_ids: Sequence[int],
                 seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def fit(self, features: np.ndarray, seed: int = 0):
        raise NotImplementedError

    def score(self, fitted, features: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


def even_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps 0, c, 2c, ... with c = T // count: improved-diffusion's respacing
    (``space_timesteps(1000, "ddim10")`` -> 0, 100, ..., 900), which DiffPath uses."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"the number of timesteps must be between 1 and {num_timesteps}, got {count}")
    return list(range(0, num_timesteps, num_timesteps // count))[:count]


def at_every_timestep(x: torch.Tensor, timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) images -> (L*B, C, H, W) copies, timestep-major, and their (L*B,) timesteps, so
    that one (chunked) UNet call covers all L timesteps; reshape its output to (L, B, ...)."""
    batch = x.shape[0]
    repeated = x.repeat(len(timesteps), *([1] * (x.dim() - 1)))
    return repeated, torch.tensor(list(timesteps), device=x.device).repeat_interleave(batch)


@torch.no_grad()
def measure_features(detector: FeatureDetector, model: ModelFn, schedule, images: torch.Tensor,
                     filenames: Sequence[str], split_type: str, batch_size: int, seed: int, device: torch.device,
                     progress: bool | Callable[[int], object] = True, index_offset: int = 0) -> pd.DataFrame:
    """One row per image: filename, image_index, type and the detector's feature columns.

    ``images[i]`` is image ``index_offset + i`` of its split (its index seeds any noise), as in
    :func:`src.reconstruction.measure_split`.
    """
    bar = tqdm(total=len(images), desc=f"{detector.name} {split_type}", unit="img", leave=False) if progress is True else None
    advance = bar.update if bar is not None else progress if callable(progress) else lambda n: None
    columns: dict[str, list[np.ndarray]] = {c: [] for c in detector.columns()}
    for first in range(0, len(images), batch_size):
        x0 = images[first:first + batch_size].to(device)
        ids = list(range(index_offset + first, index_offset + first + len(x0)))
        for column, values in detector.features(model, schedule, x0, ids, seed).items():
            columns[column].append(values.double().cpu().numpy())
        advance(len(x0))
    if bar is not None:
        bar.close()
    frame = pd.DataFrame({"filename": np.asarray(filenames, dtype=object),
                          "image_index": np.arange(index_offset, index_offset + len(images)), "type": split_type})
    for column, parts in columns.items():
        frame[column] = np.concatenate(parts) if parts else np.zeros(0)
    return frame
