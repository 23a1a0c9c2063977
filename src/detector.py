"""Scoring new images with a trained and scored run: a threshold fitted on the validation
scores, and a small Python API.

``ood_detection.py`` fits the threshold: the score below which a chosen share (the
in-distribution TPR, default 95%) of the validation images fall, and saves it with what
scoring needs in ``ood/threshold.json``. Then, from a notebook::

    from src.detector import OODDetector
    detector = OODDetector.load("runs/fashionmnist")      # the run's folder
    scores = detector.score(images)                       # (N, C, H, W) in [0, 1] -> (N,)
    is_ood = detector.predict(images)                     # scores above the threshold

or from the command line, ``ood_detection.py --score_ids new.csv`` (a split CSV or a folder of
image files). Images are reconstructed with the run's own settings (its validation results'
settings manifest: model file, steps, start points, metrics, seed, precision) and z-scored
with its validation statistics, so an image scores the same as through reconstruct.py and
ood_detection.py (image i of a set gets the noise of index i, as there).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.errors import DataError, ScoringError

THRESHOLD_FILE = "threshold.json"


def fit_threshold(val_scores: np.ndarray, tpr: float) -> float:
    """The score at or below which a share ``tpr`` of the validation images fall."""
    return float(np.quantile(val_scores, tpr, method="higher"))


class OODDetector:
    """A trained run's detector: reconstruct, measure, z-score, score, threshold."""

    def __init__(self, run_dir: Path, device: torch.device, lpips_weights: Path | None = None):
        from src.checkpoint import load_model
        from src.config import check_channels
        from src.diffusion import PLMSSampler
        from src.metrics import LPIPSMetric
        from src.reconstruction import default_model_batch, in_chunks, unet_caller
        from src.scoring import fit_validation_stats, read_results, read_settings, select_t

        self.run_dir, self.device = Path(run_dir), device
        path = self.run_dir / "ood" / THRESHOLD_FILE
        if not path.exists():
            raise ScoringError(f"{path} does not exist: run ood_detection.py on this run first (it fits the "
                               "threshold on the validation scores).")
        self.saved = json.loads(path.read_text())
        settings = read_settings(self.run_dir / "ood" / "results_val.csv")
        if settings is None or settings.get("model_file") != self.saved["settings"]["model_file"]:
            raise ScoringError(f"{path} no longer matches {self.run_dir / 'ood' / 'results_val.csv'}; re-run "
                               "ood_detection.py to fit the threshold again.")
        self.settings = settings
        model_file = Path(settings["model_file"])
        model, self.schedule, config, info = load_model(model_file, device)
        check_channels(config, bool(settings["is_grayscale"]), str(model_file))
        self.image_shape = info.get("image_shape")
        self.sampler = PLMSSampler(self.schedule)
        self.sampler.set_timesteps(settings["num_inference_steps"])
        self.start_indices = np.asarray([self.sampler.index_of(t) for t in settings["start_t"]])
        self.metrics = self.saved["metrics"]
        self.lpips = (LPIPSMetric(lpips_weights, pad=settings["lpips_pad"]).to(device)
                      if "lpips" in settings["metrics"] else None)
        self.batch_size = 64
        self.model_fn = in_chunks(unet_caller(model, device, settings["precision"]),
                                  default_model_batch(self.batch_size, device))
        val = select_t(read_results(self.run_dir / "ood" / "results_val.csv"), self.saved["max_t"], self.saved["t_skip"])
        self.stats = fit_validation_stats(val, self.metrics)
        self.threshold = self.saved["threshold"]

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", lpips_weights: str | Path | None = None) -> "OODDetector":
        from src.cli import pick_device

        return cls(Path(run_dir), pick_device(device), lpips_weights)

    def check_images(self, images: torch.Tensor, filenames=None) -> None:
        channels = 1 if self.settings["is_grayscale"] else 3
        expected = tuple(self.image_shape) if self.image_shape is not None else None
        if images.dim() != 4 or images.shape[1] != channels or (expected and tuple(images.shape[1:]) != expected):
            where = f" ({filenames[0]})" if filenames else ""
            raise DataError(f"Images{where} have shape {tuple(images.shape[1:])}, but the model of {self.run_dir} "
                            f"takes {expected or (channels, 'H', 'W')}: convert or resize them.")

    def measure(self, images: torch.Tensor, filenames=None) -> pd.DataFrame:
        """Reconstruction errors of (N, C, H, W) images in [0, 1]: one row per image and t."""
        from src.reconstruction import measure_split

        self.check_images(images, filenames)
        filenames = filenames or [f"image_{i}" for i in range(len(images))]
        return measure_split(self.model_fn, self.schedule, self.sampler, images, filenames, "new", self.start_indices,
                             self.batch_size, self.settings["seed"], self.device, self.lpips,
                             clamp_for_lpips=self.settings.get("clamp_for_lpips", False))

    def score(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """The OOD score of each image (higher = more OOD), as ood_detection.py computes it."""
        from src.scoring import score_frame, select_t

        frame = select_t(self.measure(images, filenames), self.saved["max_t"], self.saved["t_skip"])
        return score_frame(frame, self.stats, self.metrics).to_numpy()

    def predict(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """True for images whose score is above the threshold fitted on the validation scores."""
        return self.score(images, filenames) > self.threshold
