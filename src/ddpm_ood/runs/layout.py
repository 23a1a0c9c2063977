"""The files of one run, and the settings manifest beside every results file: one home for both.

A run is the folder ``OUTPUT_DIR/MODEL_NAME/``:

=====================================================  ===============================================
``config.yaml``                                        the resolved training config (``train.py``)
``checkpoint.pth``, ``checkpoint_prev.pth``            resume state, the latest and the one before
``best_model.pth``, ``final_model.pth``                the weights used for scoring
``tensorboard/``, ``tensorboard/ood_detection/``       TensorBoard logs of training and of scoring
``ood/results_<set>.csv``                              the paper's detector's results (its file names)
``ood/<detector>/results_<set>.csv``                   every other detector's results
``.../results_<set>.settings.json``                    how a results file was made (its manifest)
``.../.partial/<set>/``                                the finished chunks of a set in progress
``ood/summary_auroc.csv``, ``ood/scores_<set>.csv``    ``ood_detection.py``'s metrics and per-image scores
``ood/auroc_per_t.csv``, ``ood/fits/<detector>.json``  AUROC per start point; each detector's fit and thresholds
``ood/figures/``, ``ood/examples_<set>.npz``           figures; the reconstructions ``--save_examples`` kept
``ood/maps_<set>.npz``                                 anomaly maps (``--save_maps``), z-scored on the validation set
``ood/predictions_<name>.csv``                         ``ood_detection.py --score_ids``'s verdicts
=====================================================  ===============================================

The manifest (``results_<set>.settings.json``) is a flat JSON object in key groups: the model
(file, size, time), the run (seed, precision, channels), the detector's own settings, how the
work was cut (chunk size), the set (split, first_n, images, a digest of the file names) and
add-ons (cost, examples) that describe files made beside the results. :func:`read_manifest` is
the one reader, :func:`manifest_differences` the one comparison; nothing else builds these
paths or keys.

Imports nothing heavy: the scripts' parsers use the name rules.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from ddpm_ood.utils.errors import CheckpointError, DataError, ManifestError

# A run or set name becomes a folder or file name: letters, digits and . _ + -, starting with a
# letter or digit (so never "", ".", ".." or a hidden name), and no path separator.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# Results set names that are not OOD sets: results_val/in/fit.csv (reconstruct.py names OOD sets
# after their split CSVs, so it refuses these; ood_detection.py does not score them as OOD).
RESERVED_SETS = ("val", "in", "fit")

CHECKPOINT = "checkpoint.pth"
PREVIOUS_CHECKPOINT = "checkpoint_prev.pth"
BEST_MODEL = "best_model.pth"
FINAL_MODEL = "final_model.pth"
MODEL_FILE_NAMES = (BEST_MODEL, FINAL_MODEL, CHECKPOINT)  # the order reconstruct.py picks them in


class RunFiles:
    """Every artefact path of the run in ``run_dir``."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.config = self.dir / "config.yaml"
        self.checkpoint = self.dir / CHECKPOINT
        self.previous_checkpoint = self.dir / PREVIOUS_CHECKPOINT
        self.best_model = self.dir / BEST_MODEL
        self.final_model = self.dir / FINAL_MODEL
        self.tensorboard = self.dir / "tensorboard"
        self.tensorboard_scoring = self.tensorboard / "ood_detection"
        self.ood = self.dir / "ood"
        self.summary = self.ood / "summary_auroc.csv"
        self.auroc_per_t = self.ood / "auroc_per_t.csv"
        self.fits = self.ood / "fits"
        self.figures = self.ood / "figures"

    @property
    def name(self) -> str:
        return self.dir.name

    def trained_files(self) -> list[Path]:
        """The checkpoints and model files that exist: a run with any of them has been trained."""
        return [p for p in (*self.model_files(), self.previous_checkpoint) if p.exists()]

    def model_files(self) -> list[Path]:
        return [self.dir / name for name in MODEL_FILE_NAMES]

    def find_model_file(self, eval_checkpoint: str | None = None) -> Path:
        """The file to score with: ``--eval_checkpoint`` if given (a relative path means the run's
        folder, never the working directory, which may hold another run's file of the same name),
        else the best, final or latest model."""
        if eval_checkpoint:
            path = Path(eval_checkpoint)
            return path if path.is_absolute() else self.dir / path
        for path in self.model_files():
            if path.exists():
                return path
        raise CheckpointError(f"No model file ({', '.join(MODEL_FILE_NAMES)}) in {self.dir}. Run train.py first.")

    # --- results: ood/[<folder>/]results_<set>.csv --------------------------------------------

    def results_dir(self, folder: str) -> Path:
        """A detector's results folder: ``ood/`` itself for ``folder`` "" (the paper's file names)."""
        return self.ood / folder if folder else self.ood

    def results(self, folder: str, set_name: str) -> Path:
        return self.results_dir(folder) / f"results_{set_name}.csv"

    def partial(self, folder: str, set_name: str) -> Path:
        """The finished chunks of a set in progress: ``chunk_<k>.csv`` and their manifest ``settings.json``."""
        return self.results_dir(folder) / ".partial" / set_name

    def partial_manifest(self, folder: str, set_name: str) -> Path:
        return self.partial(folder, set_name) / "settings.json"

    def chunk(self, folder: str, set_name: str, k: int) -> Path:
        return self.partial(folder, set_name) / f"chunk_{k:05d}.csv"

    def result_sets(self, folder: str) -> list[str]:
        """The sets with a results file in a detector's folder, sorted by file name."""
        return [p.stem[len("results_"):] for p in sorted(self.results_dir(folder).glob("results_*.csv"))]

    def scores(self, set_name: str) -> Path:
        return self.ood / f"scores_{set_name}.csv"

    def examples(self, set_name: str, folder: str = "") -> Path:
        """A set's kept examples (--save_examples / --save_maps): the paper's detector's in ``ood/``, another
        detector's in its results folder."""
        return self.results_dir(folder) / f"examples_{set_name}.npz"

    def example_figure(self, set_name: str) -> Path:
        return self.figures / f"examples_{set_name}.png"

    def maps(self, set_name: str, folder: str = "") -> Path:
        """A set's anomaly maps: the paper's detector's in ``ood/``, another detector's in its results folder."""
        return self.results_dir(folder) / f"maps_{set_name}.npz"

    def scan_maps(self, set_name: str) -> Path:
        """The folder of a set's maps as NIfTI files on each scan's own grid (ood/maps_nifti/<set>/)."""
        return self.ood / "maps_nifti" / set_name

    def maps_figure(self, set_name: str, folder: str = "") -> Path:
        return self.figures / (f"maps_{set_name}_{folder}.png" if folder else f"maps_{set_name}.png")

    def predictions(self, name: str, detector: str | None = None) -> Path:
        """``ood_detection.py --score_ids``'s verdicts: predictions_<name>.csv, or with --detector X
        predictions_<name>_<X>.csv."""
        return self.ood / (f"predictions_{name}.csv" if detector is None else f"predictions_{name}_{detector}.csv")

    def fit(self, detector: str) -> Path:
        """A detector's fit and thresholds, for scoring new images (ood_detection.py writes it)."""
        return self.fits / f"{detector}.json"

    def fit_files(self) -> list[Path]:
        return sorted(self.fits.glob("*.json"))


# --- the settings manifest ------------------------------------------------------------------------

# Key groups, each key with the label an error message gives it. The model's identity (a digest
# of its weights' values, network config, schedule, prediction type and spaces: see
# ddpm_ood.models.spaces) and the run settings every detector shares, compared wherever results meet:
MODEL_KEYS = {"model_id": "model identity",
              "preprocessing": "another library's model's --image_roi, --image_size, --intensity"}
RUN_KEYS = {"seed": "seed", "precision": "precision", "is_grayscale": "channels", "noise": "noise seeding"}
# What the model was and where: recorded, never compared (a run folder may be moved or copied, a
# model re-saved in another format; the identity says whether it is the same model). A run's own
# model file is recorded relative to the run.
LOCATION_KEYS = {"model_file": "model file", "model_file_bytes": "model file size",
                 "model_file_mtime_ns": "model file time", "pretrained": "pretrained model",
                 "model_source": "model source", "model_parts": "model identity's parts",
                 "model_sha256": "model file (SHA-256)"}
# How the work was cut into chunks: must match to resume a set, never to score it.
STORE_KEYS = {"chunk_size": "chunk size"}
# Which images: differ between sets by design.
SET_KEYS = {"split": "split", "first_n": "first_n", "n_images": "images", "files_digest": "image files",
            "images_sha256": "image pixels"}
# Add-ons: files made beside the results and their cost, never compared.
EXTRA_KEYS = ("examples", "nfe_per_image", "nfe_per_start")
# Seals: the SHA-256 of the results file and of the manifest itself, checked when read.
SEAL_KEYS = {"results_sha256": "results file (SHA-256)", "sha256": "manifest (SHA-256)"}
# Labels of the detectors' own keys (each detector's settings() adds its keys to a manifest).
DETECTOR_LABELS = {"num_inference_steps": "steps", "start_t": "start points", "metrics": "metrics",
                   "lpips_pad": "LPIPS padding", "clamp_for_lpips": "LPIPS clamp", "detector": "detector"}
LABELS = {**MODEL_KEYS, **RUN_KEYS, **LOCATION_KEYS, **STORE_KEYS, **SET_KEYS, **DETECTOR_LABELS, **SEAL_KEYS}
MAX_NAME = 100  # run and set names become file names (with prefixes and suffixes, under 255 bytes)


def files_digest(filenames: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(filenames).encode()).hexdigest()


def images_sha256(images) -> str:
    """The SHA-256 of a loaded set's pixels (an (N, ...) CPU tensor): what the images are, wherever their files lie."""
    digest = hashlib.sha256()
    for first in range(0, len(images), 64):  # in pieces: a set of volumes is read from disk as it goes
        digest.update(images[first:first + 64].contiguous().numpy().tobytes())
    return digest.hexdigest()


def image_digests(images) -> list[str]:
    """Each image's 64-bit digest (16 hex digits) of what it shows (its noise key's first half): the same image
    has the same digest wherever it stands, in whatever set."""
    from ddpm_ood.diffusion.reconstruction import image_keys

    return [f"{key >> 64:016x}" for first in range(0, len(images), 64) for key in image_keys(images[first:first + 64])]


def set_entries(split: str | Path, first_n: int | None, filenames: Sequence[str], images=None) -> dict:
    """The manifest's set group: which split, how many of its images, a digest of their names and,
    given the loaded images, of their pixels (a split re-made from other files is not the same set)."""
    entries = {"split": str(Path(split).resolve()), "first_n": first_n, "n_images": len(filenames),
               "files_digest": files_digest(filenames)}
    if images is not None:
        entries["images_sha256"] = images_sha256(images)
    return entries


def build_manifest(model: dict, run: dict, detector: dict, image_set: dict, chunk_size: int) -> dict:
    """A results manifest from its groups (as JSON will read it back)."""
    manifest = {**model, **run, **detector, "chunk_size": chunk_size, **image_set}
    return json.loads(json.dumps(manifest))


def manifest_file(results_path: Path) -> Path:
    """``results_<set>.csv`` -> ``results_<set>.settings.json``."""
    return results_path.with_name(f"{results_path.stem}.settings.json")


def read_manifest(results_path: Path) -> dict | None:
    """The manifest of a results file; None if it has none. A manifest that cannot be read, or was
    changed after it was sealed, is an error naming the file (ManifestError), wherever it is read."""
    path = manifest_file(results_path) if results_path.suffix == ".csv" else results_path
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ManifestError(f"Cannot read {path} ({err.strerror or err}); re-run reconstruct.py with --restart for "
                            "that set.") from err
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise ManifestError(f"{path} is damaged ({err}); re-run reconstruct.py with --restart for that set.") from err
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} is not a settings manifest; re-run reconstruct.py with --restart for that set.")
    if "sha256" in manifest and manifest["sha256"] != record_sha256(manifest):
        raise ManifestError(f"{path} was changed after reconstruct.py wrote it (its SHA-256 does not match its "
                            "content); re-run reconstruct.py with --restart for that set.")
    return manifest


def write_manifest(path: Path, manifest: dict, sealed: bool = False) -> None:
    """Write a manifest; ``sealed``: with the SHA-256 of its content, so that an edit is caught."""
    from ddpm_ood.utils.files import write_text_atomic

    manifest = {k: v for k, v in json.loads(json.dumps(manifest)).items() if k != "sha256"}
    if sealed:
        manifest["sha256"] = record_sha256(manifest)
    write_text_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))


def record_sha256(record: dict) -> str:
    """The seal of a JSON record (a manifest, a fit file): the SHA-256 of its content, its own
    ``sha256`` entry left out."""
    content = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def without(manifest: dict, *groups: Iterable[str]) -> dict:
    dropped = {key for group in groups for key in group}
    return {k: v for k, v in manifest.items() if k not in dropped}


def made_with(manifest: dict) -> dict:
    """What the results depend on, and where the model was: the manifest without add-ons and seals."""
    return without(manifest, EXTRA_KEYS, SEAL_KEYS)


# Where a set's files lie: compared only for results that record no digest of the images' pixels.
IMAGE_LOCATION_KEYS = ("split", "files_digest")


def results_identity(manifest: dict) -> dict:
    """How the results were made, wherever the model file was and wherever the images lie (the same
    images moved to another folder, with their split file, are the same set): what resuming and
    reuse compare."""
    identity = without(made_with(manifest), LOCATION_KEYS)
    if "images_sha256" in identity:  # what the images are decides, not where their files lie
        identity = without(identity, IMAGE_LOCATION_KEYS)
    return identity


def same_results(a: dict, b: dict) -> bool:
    """Whether two manifests describe results made the same way (wherever the model file was)."""
    return results_identity(a) == results_identity(b)


def scored_settings(manifest: dict) -> dict:
    """What every results file scored together must share: all but the set, the chunking, the model's
    location, the add-ons and the seals."""
    return without(manifest, SET_KEYS, STORE_KEYS, LOCATION_KEYS, EXTRA_KEYS, SEAL_KEYS)


def model_settings(manifest: dict, groups: Sequence[dict] = (MODEL_KEYS, RUN_KEYS)) -> dict:
    """The model and run groups: what the results of different detectors scored together must share."""
    return {k: manifest.get(k) for group in groups for k in group}


def identity_differences(recorded: dict | None, current: dict | None) -> str:
    """Which parts of two models' identities (their ``model_parts``) differ, in words, with the values of those
    that are short (e.g. ``prediction ('epsilon' vs 'v_prediction')``); digests by name alone."""
    if not recorded or not current:
        return "identity"
    said = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        if a != b:
            short = all(len(repr(v)) <= 40 and not (isinstance(v, str) and len(v) == 64) for v in (a, b))
            said.append(f"{key.replace('_', ' ')} ({a!r} vs {b!r})" if short else key.replace("_", " "))
    return ", ".join(said) or "identity"


def manifest_differences(reference: dict, other: dict, parts: tuple | None = None) -> list[str]:
    """Each key whose value differs between two manifests, as 'label (reference value vs other value)'; a model
    identity as which of its parts differ, given both manifests' ``model_parts`` (two digests say nothing)."""
    keys = sorted(set(reference) | set(other), key=lambda k: (list(LABELS).index(k) if k in LABELS else len(LABELS), k))
    said = []
    for k in keys:
        if reference.get(k) == other.get(k):
            continue
        if k == "model_id" and parts and parts[0] and parts[1]:
            said.append(f"model identity (its parts that differ: {identity_differences(*parts)})")
        else:
            said.append(f"{LABELS.get(k, k)} ({reference.get(k)!r} vs {other.get(k)!r})")
    return said


# --- the sets reconstruct.py writes ------------------------------------------------------------

def ood_set_name(path: str) -> str:
    """The results name of an OOD split CSV (``MNIST_test.csv`` -> ``MNIST``), checked: it names
    files and a folder, so it must be a plain name, and not one of the reserved ``val``/``in``/``fit``."""
    from ddpm_ood.data.loading import resolve_split

    name = resolve_split(path).name
    if len(name) > MAX_NAME:
        raise DataError(f"--out_ids {path}: its results name would be {len(name)} characters long; {MAX_NAME} at most "
                        "(it becomes file names). Rename or copy the split CSV.")
    if not PLAIN_NAME.fullmatch(name) or name in RESERVED_SETS:
        raise DataError(
            f"--out_ids {path}: its results name would be {name!r}, which "
            + (f"is reserved for the {dict(val='validation', fit='fit').get(name, 'in-distribution')} results"
               if name in RESERVED_SETS else "is not a plain name (letters, digits, . _ + -, starting with a "
               "letter or digit)")
            + ". Rename or copy the split CSV (the set is named after the file, without '_test').")
    return name


def planned_sets(validation_ids: str | None, in_ids: str | None, fit_ids: str | None, out_ids: str,
                 run_val: bool, run_in: bool, run_out: bool, first_n_val: int | None,
                 first_n: int | None) -> list[tuple[str, str, int | None]]:
    """(results name, split CSV, first_n) of every set to measure, checked before any work."""
    from ddpm_ood.data.loading import resolve_split

    sets = []
    if run_val:
        sets.append(("val", validation_ids, first_n_val))
    if run_in:
        sets.append(("in", in_ids, first_n))
    if fit_ids:
        sets.append(("fit", fit_ids, first_n_val))
    for name, path, _ in sets:
        if not path:
            raise DataError(f"--{ {'val': 'validation'}.get(name, name)}_ids is required when that set is run "
                            f"(or pass --run_{name}=0).")
        resolve_split(path)  # fails now, naming the file, rather than after hours of work
    if run_out:
        # resolve_split checks each OOD file (or its base, for _vflip/_hflip) as it names the set.
        for path in (p.strip() for p in out_ids.split(",")):
            if path:
                sets.append((ood_set_name(path), path, first_n))
    names = [name for name, _, _ in sets]
    clashes = {n for n in names if names.count(n) > 1}
    if clashes:
        raise DataError(f"Two sets would write the same results file: {sorted(clashes)}. Rename one split CSV.")
    return sets
