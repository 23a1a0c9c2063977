"""The Python API: scoring new images with a scored run, or with any model and images of your own.

``ood_detection.py`` saves each detector's fit as plain JSON (``ood/fits/<detector>.json``: the
z-score statistics, the Gaussian mixture's weights, means and covariances with the
standardisation, the KDE's points and bandwidth) with a threshold per score: the score below
which a chosen share (the in-distribution TPR, default 95%) of the validation images fall.
Then, from a notebook::

    from ddpm_ood.api import OODDetector
    detector = OODDetector.load("runs/fashionmnist")                  # the paper's score
    detector = OODDetector.load("runs/fashionmnist", detector="msma")  # any detector or score name
    scores = detector.score(images)                                   # (N, C, H, W) in [0, 1] -> (N,)
    is_ood = detector.predict(images)                                 # scores above the threshold

or from the command line, ``ood_detection.py --score_ids new.csv [--detector NAME]``. Images are
measured with the run's own model and settings (the model loader :func:`ddpm_ood.models.loading.load_model`
and the detectors of :mod:`ddpm_ood.detectors`, as ``reconstruct.py`` measures them) and scored with
the saved fit, so an image scores exactly as through the scripts; its noise comes from its own
pixels, so its score does not depend on the images that come with it.

:class:`ImageDetector` fits one detector on in-distribution images you give it, with any model
(a run's model file or a pretrained diffusers model); :func:`pytorch_ood_detector` is the same
as a ``pytorch_ood.api.Detector`` (``fit`` on a loader of in-distribution images, ``predict``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from ddpm_ood.detectors import COMBINATIONS, DETECTORS, HEADLINE, detector_class, measure_knobs
from ddpm_ood.utils.errors import CheckpointError, DataError, ScoringError
from ddpm_ood.detectors.fits import read_fit
from ddpm_ood.models.loading import DEFAULT_BATCH_SIZE, ModelSource, load_model
from ddpm_ood.runs.layout import PLAIN_NAME, RunFiles

logger = logging.getLogger("ddpm_ood")


class OODDetector:
    """A scored run's detector (or one of its scores): measure, score with the saved fit, threshold."""

    def __init__(self, run_dir: str | Path, device: torch.device, lpips_weights: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, detector: str | None = None,
                 model: str | Path | ModelSource | None = None):
        self.run, self.device, self.batch_size = RunFiles(run_dir), device, batch_size
        self.progress = False  # True: progress bars while measuring (--score_ids turns them on)
        self._map_thresholds: dict[float, float] = {}  # flagged(): healthy thresholds by fraction, once read
        self._val_maps: np.ndarray | None = None  # the validation images' error maps, once read
        if not self.run.dir.is_dir():
            raise ScoringError(f"{self.run.dir} does not exist: pass a run's folder (OUTPUT_DIR/MODEL_NAME, scored by "
                               "ood_detection.py).")
        records = {path.stem: path for path in self.run.fit_files()}
        name, self.score_name, record = resolve(self.run, records, detector)
        self.threshold, self.tpr = record["thresholds"][self.score_name], record["tpr"]
        if name in COMBINATIONS:
            members = record["members"][self.score_name]
            self.combination = (detector_class(name), record["state"][self.score_name], members)
        else:
            self.combination, members = None, [name]
        self.parts = {member: read_fit(self.run, member) if member != name else record for member in members}
        manifest = next(iter(self.parts.values()))["fit_results"]
        self.settings = manifest
        self.model = load_model(self.model_source(manifest, model), device, manifest["precision"],
                                batch_size=batch_size)
        different = self.model.differs_from(manifest)
        if different:
            raise ScoringError(f"{self.run.dir}'s results were made with another model than {self.model.source} "
                               f"({different} differ): re-run reconstruct.py (with --restart) and ood_detection.py, or "
                               "pass the model that made them (model=..., or --pretrained).")
        self.model.is_grayscale(manifest["is_grayscale"])
        self.model.adopt_preprocessing(manifest.get("preprocessing"))  # another library's: as its sets were read
        self.detectors = {}
        for member, part in self.parts.items():
            cls = detector_class(member)
            measuring = cls.from_settings(part["fit_results"])  # as the run's results were measured
            measuring.prepare(device, lpips_weights)
            scoring = cls.from_settings(part["settings"])  # as ood_detection.py scored them
            self.detectors[member] = (measuring, scoring, scoring.load_fit(part["state"]), part["main"])

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", lpips_weights: str | Path | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, detector: str | None = None,
             model: str | Path | ModelSource | None = None) -> "OODDetector":
        """``detector``: a detector (its main score) or a score name; default: the paper's score.
        ``model``: where the model that made the run's results is now, if it moved (a pretrained
        folder, or a ModelSource); default: the one its results record. Its identity must match."""
        from ddpm_ood.utils.runtime import pick_device

        return cls(Path(run_dir), pick_device(device), lpips_weights, batch_size, detector, model)

    def model_source(self, manifest: dict, model: str | Path | ModelSource | None) -> ModelSource:
        if isinstance(model, ModelSource):
            return model
        if model is not None:
            return ModelSource.of(manifest.get("model_source") or "run", model)
        try:
            return ModelSource.from_manifest(manifest, self.run.dir)
        except CheckpointError as err:
            raise ScoringError(f"{err} If the model moved, pass where it is now (OODDetector.load(run, model=PATH), "
                               "ood_detection.py --score_ids ... --pretrained PATH).") from None

    def check_images(self, images: torch.Tensor, filenames=None) -> None:
        self.model.image_space.check(images, f" ({filenames[0]})" if filenames else "", f"of {self.run.dir}",
                                     self.model.info.get("preprocessing"))

    def score(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """The OOD score of each image (higher = more OOD), as ood_detection.py computes it. Images are
        prepared as the split loader prepares image files (each scaled to [0, 1] as the model's --intensity
        says: min-max unless it was trained otherwise)."""
        from ddpm_ood.data.loading import prepare_images, to_channels

        images = prepare_images(images, filenames, self.model.image_space.dims, self.intensity)
        return self.score_prepared(to_channels(images, self.model.channels), filenames)

    @property
    def intensity(self) -> str:
        """How the model's images were scaled (its --intensity)."""
        from ddpm_ood.data.loading import record_intensity

        return record_intensity(self.model.info.get("preprocessing"))

    def input_check(self, images: torch.Tensor, filenames=None) -> list[str]:
        """Per image (made as the model's were): '' where it looks like the model's training images, else what is
        far outside their range (foreground fraction, foreground intensity and its spread), said in a warning.
        A mask or another contrast listed as a scan is caught here; its score alone would not say why."""
        from ddpm_ood.data.loading import input_check

        checks = input_check(images, self.model.training_profile())
        flagged = [(name, check) for name, check in
                   zip(filenames or [f"image {i} of the batch" for i in range(len(images))], checks) if check]
        if flagged:
            logger.warning("%d of %d images are unlike the model's training images: %s%s. Check they are what you "
                           "mean to score (a mask or another contrast listed as a scan?).", len(flagged), len(images),
                           "; ".join(f"{name}: {check}" for name, check in flagged[:3]),
                           f" (and {len(flagged) - 3} more)" if len(flagged) > 3 else "")
        return checks

    def score_prepared(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """:meth:`score` of images already made as the split loader makes them (scaled, cropped, resized); the
        :meth:`input_check` of each is kept in ``last_input_check``."""
        self.check_images(images, filenames)
        self.last_input_check = self.input_check(images, filenames)
        filenames = filenames or [f"image_{i}" for i in range(len(images))]
        scores = {}
        for member, (measuring, scoring, fitted, main) in self.detectors.items():
            frame = measuring.measure(self.model, images, filenames, "new", self.batch_size, self.settings["seed"],
                                      progress=self.progress)
            scores[member] = scoring.score(fitted, frame).scores
        if self.combination is None:
            return next(iter(scores.values()))[self.score_name].to_numpy()
        from ddpm_ood.metrics.scoring import ZScore

        combination, state, members = self.combination
        mains = pd.DataFrame({m: scores[m][self.detectors[m][3]].to_numpy() for m in members})
        return combination.score(ZScore.from_state(state), mains, members)

    def predict(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """True for images whose score is above the threshold fitted on the validation scores."""
        return self.score(images, filenames) > self.threshold

    def maps(self, images: torch.Tensor, filenames=None) -> np.ndarray:
        """Where each image is unusual, (N, *spatial): its anomaly map as ood_detection.py draws the kept
        examples' (the squared error of each start point's reconstruction, or x0 prediction, z-scored on the
        validation images' maps, mean over t), by the first of this detector's members that keeps examples (the
        paper's, or the partial-diffusion one). Needs the validation examples reconstruct.py --save_maps kept."""
        from ddpm_ood.data.loading import prepare_images, to_channels

        images = prepare_images(images, filenames, self.model.image_space.dims, self.intensity)
        return self.maps_prepared(to_channels(images, self.model.channels))

    def maps_prepared(self, images: torch.Tensor) -> np.ndarray:
        """:meth:`maps` of images already made as the split loader makes them."""
        from ddpm_ood.evaluation.anomaly_maps import error_maps, zscored_maps

        self.check_images(images)
        examples = self._map_detector().examples(self.model, images, self.settings["seed"])
        return zscored_maps(error_maps(examples), self._validation_maps())[1]

    def _validation_maps(self) -> np.ndarray:
        """The validation images' error maps, which the maps are z-scored on: read once, however many batches."""
        from ddpm_ood.evaluation.anomaly_maps import error_maps

        if self._val_maps is None:
            val = self.run.examples("val", self._map_detector().folder())
            if not val.exists():
                raise ScoringError(f"{val} does not exist: the maps are z-scored on the validation images' maps; "
                                   "re-run reconstruct.py with --save_maps N (N >= 2) and --run_val 1.")
            with np.load(val) as kept:
                self._val_maps = error_maps(kept)
        return self._val_maps

    def _map_detector(self):
        """The first of this detector's members that keeps examples (draws maps), as measured."""
        from ddpm_ood.detectors.base import Detector

        for measuring, *_ in self.detectors.values():
            if type(measuring).examples is not Detector.examples:
                return measuring
        raise ScoringError(f"{', '.join(self.detectors)} draws no maps: load the run with detector='recon' or "
                           "'partial' (OODDetector.load(run, detector=...), --detector) for maps.")

    def flagged(self, images: torch.Tensor, maps: np.ndarray, fraction: float = 0.05) -> np.ndarray | None:
        """Thresholded masks of :meth:`maps_prepared`'s ``maps`` of ``images`` (uint8, 1 = flagged): each map
        median-filtered inside the image's foreground (a new scan has no brain mask), 1 where it reaches the
        value that flags ``fraction`` of the in-distribution test images' voxels (their kept maps, as the
        localisation table's thresholds), small components removed. None when the in-distribution test set
        kept no maps (reconstruct.py --save_maps N --run_in 1)."""
        from ddpm_ood.evaluation.anomaly_maps import error_maps, flag, map_threshold, zscored_maps

        thresholds = self._map_thresholds  # read once, however many batches
        if fraction not in thresholds:
            folder = self._map_detector().folder()
            healthy, val = self.run.examples("in", folder), self.run.examples("val", folder)
            if not healthy.exists() or not val.exists():
                return None
            with np.load(healthy) as kept:
                kept = dict(kept)
            healthy_maps = zscored_maps(error_maps(kept), self._validation_maps())[1]
            thresholds[fraction] = map_threshold(healthy_maps, kept, fraction)
        return flag(maps, {"inputs": images.cpu().numpy()}, thresholds[fraction])


def resolve(run: RunFiles, records: dict[str, Path], name: str | None) -> tuple[str, str, dict]:
    """``name`` (a detector, or a score of one; None: the paper's) -> (detector, score, its fit record)."""
    if not records:
        raise ScoringError(f"{run.fits} holds no fits: run ood_detection.py on this run first (it fits every detector "
                           "and saves the fits and thresholds for new images).")
    name = name or HEADLINE
    if name in records:
        record = read_fit(run, name)
        return name, record["main"], record
    fits = {}
    for detector in records:
        fits[detector] = read_fit(run, detector)
        if name in fits[detector]["thresholds"]:
            return detector, name, fits[detector]
    known = {d: list(record["thresholds"]) for d, record in fits.items()}
    if name in (*DETECTORS, *COMBINATIONS):
        raise ScoringError(f"{run.fit(name)} does not exist: ood_detection.py found no results of {name} in this run "
                           f"(fitted: {known}). Measure it with reconstruct.py --detectors, then re-run ood_detection.py.")
    raise ScoringError(f"--detector {name!r} is neither a detector nor a score of this run; fitted: {known}.")


def score_files(run_dir: Path, split: str | Path, device: str = "auto", lpips_weights: str | Path | None = None,
                detector: str | None = None, model: str | None = None, output: str | Path | None = None,
                maps: bool = False) -> tuple[pd.DataFrame, Path, OODDetector]:
    """``ood_detection.py --score_ids``: score a split CSV or a folder of image files, and write
    ``ood/predictions_<name>.csv`` (filename, score, is_ood, input_check; ``_<detector>`` in the name with one),
    or ``output``. ``maps`` (--score_maps): each image's anomaly map too (:meth:`OODDetector.maps`), beside the
    predictions (``predictions_<name>_maps.npz``; NIfTI scans' on their own grid in ``predictions_<name>_maps/``)."""
    from ddpm_ood.data.loading import load_images, resolve_split
    from ddpm_ood.utils.files import check_writable, save_csv_atomic

    name = resolve_split(split).name
    if not PLAIN_NAME.fullmatch(name):  # "." or "../new": the folder's own name
        name = Path(split).resolve().name
    if not PLAIN_NAME.fullmatch(name):
        raise DataError(f"--score_ids {split}: its name {name!r} is not a plain name (it names the predictions file); "
                        "rename it, or pass --predictions PATH.")
    path = Path(output) if output else RunFiles(run_dir).predictions(name, detector)
    check_writable(path)  # before any work: a read-only run would otherwise fail after measuring every image
    scorer = OODDetector.load(run_dir, device, lpips_weights, detector=detector, model=model)
    scorer.progress = True
    roi, size, intensity = scorer.model.preprocessing()  # made as the model's own were (its file says how)
    images = load_images(split, scorer.model.channels == 1, scorer.model.spatial_dims, image_roi=roi, image_size=size,
                         intensity=intensity)
    step = len(images) if isinstance(images.images, torch.Tensor) else scorer.batch_size  # volumes: a batch at a time
    scores, checks, drawn, flagged = [], [], [], []
    for i in range(0, len(images), step):
        scores.append(scorer.score_prepared(images.images[i:i + step], images.filenames[i:i + step]))
        checks += scorer.last_input_check
        if maps:
            drawn.append(scorer.maps_prepared(images.images[i:i + step]))
            flagged.append(scorer.flagged(images.images[i:i + step], drawn[-1]))
    scores = np.concatenate(scores)
    if maps:
        write_new_maps(path, images, np.concatenate(drawn), None if flagged[0] is None else np.concatenate(flagged))
    predictions = pd.DataFrame({"filename": images.filenames, "score": scores, "is_ood": scores > scorer.threshold,
                                "input_check": checks})
    if path.exists():
        logger.warning("Replacing %s.", path)  # no output replaces an earlier one without saying so
    save_csv_atomic(path, predictions)
    return predictions, path, scorer


def write_new_maps(path: Path, images, maps: np.ndarray, flagged: np.ndarray | None = None) -> None:
    """New images' maps (--score_maps) beside their predictions ``path``: ``<path stem>_maps.npz`` (``mean``,
    ``filenames``, and ``flagged``: :meth:`OODDetector.flagged`, when the run has a threshold) and, for volumes
    read from NIfTI files, each on its scan's own grid in ``<path stem>_maps/`` (``anomaly_z``, ``flagged``)."""
    from ddpm_ood.evaluation.scan_maps import write_scan_maps
    from ddpm_ood.utils.files import save_npz_atomic

    target = path.with_name(f"{path.stem}_maps.npz")
    masks = {"flagged": flagged} if flagged is not None else {}
    save_npz_atomic(target, mean=maps.astype(np.float32), filenames=np.asarray(images.filenames), **masks)
    if maps.ndim == 4:
        examples = {"filenames": np.asarray(images.filenames), **images.example_extras(0)}
        write_scan_maps(path.with_name(f"{path.stem}_maps"), examples, {"anomaly_z": maps, **masks})
    logger.info("maps of %d images in %s", len(maps), target)


# --- one detector, any model, fitted on images you give it ------------------------------------------

class ImageDetector:
    """One detector on one model, fitted on in-distribution images you pass: ``fit_images(images)``
    (or ``fit(loader)`` of ``(x, y)`` batches), then ``predict(x)`` -> scores, higher = more OOD.

    ``model``: a run's model file, or ``DiffusersModel("google/ddpm-cifar10-32")`` (any ModelSource);
    ``settings``: the detector's knobs by their reconstruct.py names (e.g. ``num_inference_steps=100``);
    images are (N, C, H, W) tensors in [0, 1].
    """

    requires_fit = True

    def __init__(self, model: str | Path | ModelSource, detector: str = HEADLINE, score: str | None = None,
                 device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0, **settings):
        from ddpm_ood.utils.runtime import pick_device

        if detector not in DETECTORS:
            raise DataError(f"detector {detector!r}: choose from {', '.join(DETECTORS)}.")
        knobs = {k.dest: k.default for k in measure_knobs()}
        unknown = sorted(set(settings) - set(knobs))
        if unknown:
            raise DataError(f"Unknown detector settings {unknown}; known: {sorted(knobs)}.")
        self.model = load_model(model, pick_device(device), batch_size=batch_size)
        self.detector = detector_class(detector).from_args(SimpleNamespace(**{**knobs, **settings}), self.model)
        self.score_name = score or self.detector.primary
        if self.score_name not in self.detector.score_names:  # before any work, not after a fit
            raise DataError(f"score {self.score_name!r} is not a score of the {detector} detector; its scores: "
                            f"{', '.join(self.detector.score_names)}.")
        self.batch_size, self.seed, self.fitted = batch_size, seed, None
        self.progress = False  # True: a progress bar while measuring

    @property
    def device(self) -> torch.device:
        return self.model.device

    def fit(self, data_loader) -> "ImageDetector":
        """Fit on every batch of ``data_loader``: ``(x, y)`` tuples (as pytorch-ood's loaders give) or tensors."""
        batches = []
        for batch in data_loader:
            if isinstance(batch, dict):
                raise DataError(f"fit() got a batch that is a dict (keys {sorted(batch)[:5]}); pass a loader of (x, y) "
                                "tuples or of image tensors, e.g. ((b['image'], b['label']) for b in loader).")
            batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        if not batches:
            raise DataError("fit() got no batches: the loader is empty; pass in-distribution images to fit on.")
        return self.fit_images(torch.cat([torch.as_tensor(b) for b in batches]))

    def fit_images(self, images: torch.Tensor) -> "ImageDetector":
        frame = self._measure(images)
        self.fitted = self.detector.fit(frame, seed=self.seed, source="the images given to fit")
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.fitted is None:
            raise self.not_fitted()
        scores = self.detector.score(self.fitted, self._measure(x)).scores[self.score_name]
        return torch.tensor(scores.to_numpy(), dtype=torch.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)

    def not_fitted(self) -> Exception:
        return ScoringError("Call fit() (or fit_images()) with in-distribution images before predict().")

    def _measure(self, images: torch.Tensor) -> pd.DataFrame:
        from ddpm_ood.data.loading import prepare_images, record_intensity, to_channels

        images = to_channels(prepare_images(images, dims=self.model.image_space.dims, intensity=record_intensity(
            self.model.info.get("preprocessing"))), self.model.channels)
        self.model.image_space.check(images, "", str(self.model.source),  # as the scripts check image files
                                     self.model.info.get("preprocessing"))
        return self.detector.measure(self.model, images, [f"image_{i}" for i in range(len(images))], "images",
                                     self.batch_size, self.seed, progress=self.progress)


def pytorch_ood_detector(model, detector: str = HEADLINE, **kwargs):
    """An :class:`ImageDetector` that is a ``pytorch_ood.api.Detector`` (pytorch-ood must be installed),
    to drop into a pytorch-ood evaluation loop: ``fit(loader)`` on in-distribution images, then
    ``OODMetrics().update(detector(x), y)``."""
    from pytorch_ood.api import Detector

    global _PytorchOODDetector
    if _PytorchOODDetector is None:
        from pytorch_ood.api import RequiresFittingException

        def not_fitted(self) -> Exception:  # pytorch-ood's own exception, as its detectors raise
            return RequiresFittingException("Call fit() with in-distribution images before predict().")

        _PytorchOODDetector = type("DiffusionOODDetector", (ImageDetector, Detector),
                                   {"__doc__": ImageDetector.__doc__, "not_fitted": not_fitted})
    return _PytorchOODDetector(model, detector, **kwargs)


_PytorchOODDetector = None
