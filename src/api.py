"""Scoring new images with a trained and scored run, from Python or ``ood_detection.py --score_ids``.

``ood_detection.py`` fits a threshold: the score below which a chosen share (the
in-distribution TPR, default 95%) of the validation images fall, and saves it with what
scoring needs in ``ood/threshold.json``. Then, from a notebook::

    from src.api import OODDetector
    detector = OODDetector.load("runs/fashionmnist")      # the run's folder
    scores = detector.score(images)                       # (N, C, H, W) in [0, 1] -> (N,)
    is_ood = detector.predict(images)                     # scores above the threshold

Images are measured with the run's own model and settings (its validation results' manifest),
through the same model loader (:func:`src.inference.load_model_fn`) and detector
(:mod:`src.detectors`) as ``reconstruct.py``, and scored with the detector fitted on the run's
validation results as ``ood_detection.py`` fits it, so an image scores the same as through
those scripts (image i of a batch gets the noise of index i, as in a split).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.detectors import HEADLINE, detector_class
from src.errors import DataError, ScoringError
from src.evaluation import Options
from src.inference import DEFAULT_BATCH_SIZE, ModelSource, load_model_fn
from src.run_files import (MODEL_KEYS, PLAIN_NAME, RunFiles, manifest_differences, model_settings,
                           read_manifest)


class OODDetector:
    """A scored run's detector: measure, score with the validation fit, threshold."""

    def __init__(self, run_dir: str | Path, device: torch.device, lpips_weights: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        self.run, self.device, self.batch_size = RunFiles(run_dir), device, batch_size
        if not self.run.threshold.exists():
            raise ScoringError(f"{self.run.threshold} does not exist: run ood_detection.py on this run first (it fits "
                               "the threshold on the validation scores).")
        self.saved = json.loads(self.run.threshold.read_text())
        cls = detector_class(HEADLINE)
        val_path = self.run.results(cls.folder(), "val")
        settings = read_manifest(val_path)
        if settings is None or settings.get("model_file") != self.saved["settings"]["model_file"]:
            raise ScoringError(f"{self.run.threshold} no longer matches {val_path}; re-run ood_detection.py to fit the "
                               "threshold again.")
        self.settings = settings
        self.model = load_model_fn(ModelSource.from_manifest(settings), device, settings["precision"],
                                   batch_size=batch_size)
        changed = manifest_differences(model_settings(settings, [MODEL_KEYS]), model_settings(self.model.manifest(),
                                                                                           [MODEL_KEYS]))
        if changed:
            raise ScoringError(f"The {self.model.source} model has changed since {val_path} was made ({'; '.join(changed)}):"
                               " re-run reconstruct.py (with --restart) and ood_detection.py for this run.")
        self.model.is_grayscale(settings["is_grayscale"])
        self.detector = cls.from_settings(settings)  # measures as the run's results were measured
        self.detector.load_lpips(device, lpips_weights)
        options = Options(max_start_t=self.saved["max_t"], min_start_t=self.saved.get("min_start_t"),
                          t_skip=self.saved["t_skip"])
        self.scoring, frames = self.detector.for_scoring({"val": self.detector.read(val_path)}, {"val": val_path},
                                                         options)
        self.fitted = self.scoring.fit(frames["val"], source=str(val_path))
        self.threshold = self.saved["threshold"]

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", lpips_weights: str | Path | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE) -> "OODDetector":
        from src.runtime import pick_device

        return cls(Path(run_dir), pick_device(device), lpips_weights, batch_size)

    def check_images(self, images: torch.Tensor, filenames=None) -> None:
        channels = 1 if self.settings["is_grayscale"] else 3
        expected = tuple(self.model.image_shape) if self.model.image_shape is not None else None
        if images.dim() != 4 or images.shape[1] != channels or (expected and tuple(images.shape[1:]) != expected):
            where = f" ({filenames[0]})" if filenames else ""
            raise DataError(f"Images{where} have shape {tuple(images.shape[1:])}, but the model of {self.run.dir} "
                            f"takes {expected or (channels, 'H', 'W')}: convert or resize them.")

    def measure(self, images: torch.Tensor, filenames=None) -> pd.DataFrame:
        """The detector's results rows of (N, C, H, W) images in [0, 1]."""
        self.check_images(images, filenames)
        filenames = filenames or [f"image_{i}" for i in range(len(images))]
        return self.detector.measure(self.model, images, filenames, "new", self.batch_size, self.settings["seed"])

    def score(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """The OOD score of each image (higher = more OOD), as ood_detection.py computes it."""
        scored = self.scoring.score(self.fitted, self.measure(images, filenames))
        return scored.scores[self.saved["score"]].to_numpy()

    def predict(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """True for images whose score is above the threshold fitted on the validation scores."""
        return self.score(images, filenames) > self.threshold


def score_files(run_dir: Path, split: str | Path, device: str = "auto",
                lpips_weights: str | Path | None = None) -> tuple[pd.DataFrame, Path, OODDetector]:
    """``ood_detection.py --score_ids``: score a split CSV or a folder of image files, and write
    ``ood/predictions_<name>.csv`` (filename, score, is_ood)."""
    from src.data import load_split, resolve_split
    from src.files import save_csv_atomic

    name = resolve_split(split).name
    if not PLAIN_NAME.fullmatch(name):
        raise DataError(f"--score_ids {split}: its name {name!r} is not a plain name; rename it.")
    detector = OODDetector.load(run_dir, device, lpips_weights)
    images = load_split(split, bool(detector.settings["is_grayscale"]))
    scores = detector.score(images.images, images.filenames)  # checks the size before any work
    predictions = pd.DataFrame({"filename": images.filenames, "score": scores, "is_ood": scores > detector.threshold})
    path = detector.run.predictions(name)
    save_csv_atomic(path, predictions)
    return predictions, path, detector
