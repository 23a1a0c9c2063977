"""The one contract of every detector, and the base of those that reduce an image to a few numbers.

A :class:`Detector` is a small object whose settings say how its results were made:

Every method marked ``@abstractmethod`` below must be given, or the class cannot be instantiated
(a missing one fails at import-and-construct, never in the middle of a run), and
``from_settings`` builds through ``__init__``, so a manifest's settings pass the constructor's
checks. ``tests/detectors/test_contract.py`` runs one contract over every registered detector.

- ``name``, ``score_names`` (its scores, the first its main one), ``results_folder`` (its results
  go to ``ood/<folder>/``), ``measures_fit_set`` (measured on reconstruct.py's ``--fit_ids``
  images too) and ``expensive`` (left out of the cheap combination);
- ``from_args(args, model)`` (reconstruct.py: its knobs from the registry), ``prepare(device,
  lpips_weights)`` (resources it needs to measure, e.g. LPIPS; default none) and
  ``settings()`` / ``from_settings()`` (what its results' manifests record, and back);
- ``nfe()`` and ``cost()``: UNet evaluations per image, as recorded beside the results;
- ``measure(...)``: one results frame for a chunk of images (``read(path)`` reads it back, checked);
- ``for_scoring(frames, paths, options)``: the detector and frames ood_detection.py scores with
  (e.g. the start points it keeps), after checking the sets agree;
- ``fit(frame)`` on in-distribution images that are not test images, and ``score(fitted,
  frame)`` -> :class:`Scored`: per image, each score (higher = more OOD), indexed by image_index.

:class:`FeatureDetector` is the base of the detectors with one row per image and a fixed set of
feature columns (DiffPath's statistics, MSMA's norms, the denoising error):
:func:`measure_features` runs any of them over a set's images in batches.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ddpm_ood.diffusion.ddpm import ModelFn
from ddpm_ood.diffusion.reconstruction import NOISE, image_keys, to_model


class Scored(NamedTuple):
    """What a detector's score gives for one set: each score per image (a Series indexed by image)
    and, for detectors that explain their score, a long table of its parts (image, t, metric, z)."""

    scores: dict[str, pd.Series]
    details: pd.DataFrame | None = None


class Detector(ABC):
    name: str = ""
    score_names: tuple[str, ...] = ()
    results_folder: str | None = None  # None: the detector's name
    measures_fit_set: bool = True  # False: fits on the validation images only
    expensive: bool = False  # True: not a member of the cheap combination

    @property
    def primary(self) -> str:
        """The detector's main score (the one the combination uses)."""
        return self.score_names[0]

    @classmethod
    def folder(cls) -> str:
        return cls.name if cls.results_folder is None else cls.results_folder

    @classmethod
    @abstractmethod
    def from_args(cls, args, model) -> "Detector":
        """The detector reconstruct.py's flags ask for, for a loaded model (ddpm_ood.models.loading.LoadedModel)."""
        raise NotImplementedError

    @abstractmethod
    def settings(self) -> dict:
        """What the results depend on besides the model: recorded in every results manifest."""
        raise NotImplementedError

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: dict) -> "Detector":
        """The detector that wrote results with this manifest."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name}: {self.settings()}; {self.nfe()} model evaluations per image"

    def progress_label(self, set_name: str) -> str:
        return f"{self.name} {set_name}"

    @abstractmethod
    def nfe(self) -> int | None:
        """UNet evaluations per image."""
        raise NotImplementedError

    def cost(self) -> dict:
        """The add-on entries recorded beside the results: the cost per image."""
        return {"nfe_per_image": self.nfe()}

    def scoring_nfe(self, settings: dict) -> int | None:
        """The cost per image of what is scored, from the fit set's manifest."""
        return settings.get("nfe_per_image", self.nfe())

    @abstractmethod
    def measure(self, model, images: torch.Tensor, filenames: Sequence[str], split_type: str, batch_size: int,
                seed: int, progress: bool | Callable[[int], object] = True, index_offset: int = 0) -> pd.DataFrame:
        """The results rows of ``images`` in [0, 1] (image ``index_offset + i`` of its split at row i),
        with ``model`` (ddpm_ood.models.loading.LoadedModel: its model function, schedule, device and data range)."""
        raise NotImplementedError

    def prepare(self, device, lpips_weights: str | Path | None = None) -> None:
        """Load what measuring needs besides the model (the paper's detector: LPIPS); default nothing."""

    def examples(self, model, images: torch.Tensor, seed: int) -> dict | None:
        """Arrays to keep for a figure of the first images (reconstruct.py --save_examples), or None."""
        return None

    def keep_examples(self, n: int) -> None:
        """Before measuring a set: keep what :meth:`examples` of its first ``n`` images needs as they are
        measured, so it need not be measured twice (the paper's detector); what an earlier set kept goes.
        Default: nothing kept (:meth:`examples` measures them again, cheap for one-pass detectors)."""

    @abstractmethod
    def read(self, path: Path) -> pd.DataFrame:
        """A results file of this detector, checked."""
        raise NotImplementedError

    def for_scoring(self, frames: dict[str, pd.DataFrame], paths: dict[str, Path], options) -> tuple["Detector", dict]:
        """The detector and frames to score with under ``options`` (ddpm_ood.evaluation.scores.Options)."""
        return self, frames

    @abstractmethod
    def fit(self, frame: pd.DataFrame, seed: int = 0, source: str | None = None):
        raise NotImplementedError

    @abstractmethod
    def score(self, fitted, frame: pd.DataFrame) -> Scored:
        raise NotImplementedError

    @abstractmethod
    def fit_state(self, fitted) -> dict:
        """The fit as plain JSON, saved by ood_detection.py for scoring new images (no pickle)."""
        raise NotImplementedError

    @abstractmethod
    def load_fit(self, state: dict):
        """The fit back from :meth:`fit_state`; it scores exactly as the original."""
        raise NotImplementedError

    def per_t(self, details: pd.DataFrame) -> pd.DataFrame | None:
        """Per image (rows) and start point t (columns), the part of the main score from t alone."""
        return None


class CombinationRule(Protocol):
    """The contract of an entry of ``COMBINATIONS`` (scored from measured detectors, never measured):
    ``name`` (its fit file's name), ``score_names``, and three pure functions of the members' main
    scores. :mod:`ddpm_ood.evaluation.scores` aligns the members' scores per set and calls them."""

    name: str
    score_names: tuple[str, ...]

    def members(self, detectors: Sequence[Detector]) -> dict[str, list[str]]:
        """Each of its scores' member detectors among those with results (fewer than two: left out)."""

    def fit(self, val_scores: pd.DataFrame, members: list[str]):
        """Fit on the validation images' main scores (one column per member)."""

    def score(self, fitted, scores: pd.DataFrame, members: list[str]) -> np.ndarray:
        """Per image, the combined score (higher = more OOD)."""


class FeatureDetector(Detector):
    """A detector with one results row per image: a few UNet calls give a fixed set of numbers
    (features, one column each), and a fit on the fit set's features turns them into scores.

    Subclasses give ``features(model, schedule, x0, image_keys, seed)`` -> ``{column: (B,) tensor}``,
    and ``fit_features(features)`` / ``score_features(fitted, features)`` on (N, F) arrays.
    """

    knob: str = ""  # the registry knob that sets the number of timesteps, e.g. "path_steps"
    column_prefix: str = ""  # one feature column per timestep, <prefix><t>, unless columns() says otherwise

    def __init__(self, n_levels: int = 10, num_timesteps: int = 1000, timesteps: Sequence[int] | None = None,
                 noise: str = NOISE):
        """``n_levels`` timesteps spread over the model's ``num_timesteps``, or ``timesteps`` as recorded;
        ``noise``: how any noise a detector draws is seeded (:func:`ddpm_ood.diffusion.reconstruction.image_keys`)."""
        # one UNet call per image at each
        self.timesteps = even_timesteps(num_timesteps, n_levels) if timesteps is None else checked_timesteps(timesteps)
        self.noise = noise

    @classmethod
    def from_args(cls, args, model) -> "FeatureDetector":
        count, steps = getattr(args, cls.knob), model.schedule.num_timesteps
        try:
            return cls(count, steps)
        except ValueError as err:
            from ddpm_ood.utils.errors import DataError

            raise DataError(f"--{cls.knob} {count}: {err} (the model has {steps} timesteps).") from None

    def columns(self) -> list[str]:
        return [f"{self.column_prefix}{t}" for t in self.timesteps]

    def settings(self) -> dict:
        return {"detector": self.name, f"{self.name}_t": list(self.timesteps)}

    @classmethod
    def from_settings(cls, settings: dict) -> "FeatureDetector":
        try:
            return cls(timesteps=settings[f"{cls.name}_t"], noise=settings.get("noise", NOISE))
        except (KeyError, TypeError, ValueError) as err:
            from ddpm_ood.utils.errors import ScoringError

            raise ScoringError(f"{cls.name}: the recorded settings {settings.get(f'{cls.name}_t')!r} are not its "
                               f"timesteps ({err}); re-run reconstruct.py with --restart for it.") from None

    def nfe(self) -> int:
        return len(self.timesteps)

    def measure(self, model, images, filenames, split_type, batch_size, seed, progress=True, index_offset=0):
        return measure_features(self, model.model_fn, model.schedule, images, filenames, split_type, batch_size, seed,
                                model.device, progress=progress, index_offset=index_offset,
                                space=model.space)

    def read(self, path: Path) -> pd.DataFrame:
        from ddpm_ood.runs.results import read_feature_results

        return read_feature_results(path, self.columns())

    def fit(self, frame: pd.DataFrame, seed: int = 0, source: str | None = None):
        return self.fit_features(frame[self.columns()].to_numpy(), seed)

    def score(self, fitted, frame: pd.DataFrame) -> Scored:
        index = pd.Index(frame["image_index"].to_numpy(), name="image_index")
        values = self.score_features(fitted, frame[self.columns()].to_numpy())
        return Scored({name: pd.Series(np.asarray(array), index=index) for name, array in values.items()})

    @abstractmethod
    def features(self, model: ModelFn, schedule, x0: torch.Tensor, image_keys: Sequence[int],
                 seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @abstractmethod
    def fit_features(self, features: np.ndarray, seed: int = 0):
        raise NotImplementedError

    @abstractmethod
    def score_features(self, fitted, features: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


class ZScoredFeatureDetector(FeatureDetector):
    """A feature detector scored as the paper scores its reconstruction errors: each feature column z-scored
    with the fit set's mean and std (ddof = 1, the one z-score of ddpm_ood.metrics.scoring), its one score
    (``score_names[0]``) the mean over the columns."""

    def fit_features(self, features: np.ndarray, seed: int = 0):
        from ddpm_ood.metrics.scoring import ZScore

        return ZScore.fit(pd.DataFrame(features, columns=self.columns()), self.columns(), source=self.name)

    def score_features(self, fitted, features: np.ndarray) -> dict[str, np.ndarray]:
        z = fitted.apply(pd.DataFrame(features, columns=self.columns()), self.columns())
        return {self.score_names[0]: z.mean(axis=1).to_numpy()}

    def fit_state(self, fitted) -> dict:
        return fitted.to_state()

    def load_fit(self, state: dict):
        from ddpm_ood.metrics.scoring import ZScore

        return ZScore.from_state(state)


def even_timesteps(num_timesteps: int, count: int) -> list[int]:
    """``count`` timesteps 0, c, 2c, ... with c = T // count: improved-diffusion's respacing
    (``space_timesteps(1000, "ddim10")`` -> 0, 100, ..., 900), which DiffPath uses."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"the number of timesteps must be between 1 and {num_timesteps}, got {count}")
    return list(range(0, num_timesteps, num_timesteps // count))[:count]


def checked_draws(draws, name: str) -> int:
    """--noise_draws: a positive integer."""
    if not (isinstance(draws, int) and not isinstance(draws, bool) and draws >= 1):
        from ddpm_ood.utils.errors import DataError

        raise DataError(f"{name}: noise_draws = {draws!r} must be a positive integer.")
    return draws


def draws_setting(draws: int) -> dict:
    """The settings entry of --noise_draws: none for one draw, so results made before it match."""
    return {"noise_draws": draws} if draws != 1 else {}


def checked_timesteps(timesteps: Sequence[int]) -> list[int]:
    """Recorded timesteps: non-negative integers, strictly increasing (raises ValueError)."""
    values = [int(t) for t in timesteps]
    if not values or any(t < 0 for t in values) or values != sorted(set(values)) or \
            any(float(t) != float(v) for t, v in zip(values, timesteps)):
        raise ValueError(f"timesteps must be non-negative integers in increasing order, got {list(timesteps)}")
    return values


def at_every_timestep(x: torch.Tensor, timesteps: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) images -> (L*B, C, H, W) copies, timestep-major, and their (L*B,) timesteps, so
    that one (chunked) UNet call covers all L timesteps; reshape its output to (L, B, ...)."""
    batch = x.shape[0]
    repeated = x.repeat(len(timesteps), *([1] * (x.dim() - 1)))
    return repeated, torch.tensor(list(timesteps), device=x.device).repeat_interleave(batch)


@torch.no_grad()
def measure_features(detector: FeatureDetector, model: ModelFn, schedule, images: torch.Tensor,
                     filenames: Sequence[str], split_type: str, batch_size: int, seed: int, device: torch.device,
                     progress: bool | Callable[[int], object] = True, index_offset: int = 0,
                     space=None) -> pd.DataFrame:
    """One row per image: filename, image_index, type and the detector's feature columns.

    ``images[i]`` is image ``index_offset + i`` of its split; any noise comes from its pixels, as in
    :func:`ddpm_ood.diffusion.reconstruction.measure_split`; the features see it in the model's ``space``.
    """
    bar = tqdm(total=len(images), desc=f"{detector.name} {split_type}", unit="img", leave=False) if progress is True else None
    advance = bar.update if bar is not None else progress if callable(progress) else lambda n: None
    columns: dict[str, list[np.ndarray]] = {c: [] for c in detector.columns()}
    for first in range(0, len(images), batch_size):
        batch = images[first:first + batch_size]
        keys = image_keys(batch, detector.noise)  # any noise a detector draws comes from what the image shows
        x0 = to_model(batch.to(device), space)
        for column, values in detector.features(model, schedule, x0, keys, seed).items():
            columns[column].append(values.double().cpu().numpy())
        advance(len(x0))
    if bar is not None:
        bar.close()
    frame = pd.DataFrame({"filename": np.asarray(filenames, dtype=object),
                          "image_index": np.arange(index_offset, index_offset + len(images)), "type": split_type})
    for column, parts in columns.items():
        frame[column] = np.concatenate(parts) if parts else np.zeros(0)
    return frame
