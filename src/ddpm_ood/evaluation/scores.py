"""The evaluation as a library: a run's results in, every detector's scores and metrics out.

:func:`evaluate` finds each registered detector's results in a run, checks them (one model, one
set of settings, every value finite, the same start points), fits each detector on its fit set
(the validation images, or ``--fit_on=fit``'s), scores every set, combines the detectors, and
returns an :class:`Evaluation`: for each detector, score and set the per-image scores, for each
OOD set the metrics with their bootstrap intervals, the AUROC per start point, and for each
detector its fit as plain JSON with a threshold per score (what scoring new images needs). It
prints nothing and writes nothing: :mod:`ddpm_ood.evaluation.report` does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ddpm_ood.detectors import COMBINATIONS, DETECTORS, HEADLINE, detector_class
from ddpm_ood.detectors.base import Detector
from ddpm_ood.utils.errors import ScoringError
from ddpm_ood.detectors.fits import fit_record
from ddpm_ood.runs.layout import (RESERVED_SETS, RunFiles, made_with, manifest_differences, model_settings, read_manifest,
                           scored_settings)
from ddpm_ood.metrics.scoring import auroc, bootstrap_intervals, ood_metrics

logger = logging.getLogger("ddpm_ood")


@dataclass(frozen=True)
class Options:
    """What ood_detection.py's flags choose."""

    max_start_t: int | None = None
    min_start_t: int | None = None
    t_skip: int = 1
    fit_on: str = "val"  # the density fits' images: "val" or "fit" (reconstruct.py --fit_ids)
    bootstrap: int = 200  # resamples of the intervals; 0: none
    bootstrap_seed: int = 0  # seeds the resampling and the density fits
    tpr: float = 0.95  # in-distribution TPR of the threshold for new images


@dataclass
class Found:
    """One detector's results in a run: read, checked and ready to fit and score."""

    detector: Detector
    frames: dict[str, pd.DataFrame]  # set -> results
    paths: dict[str, Path]
    settings: dict  # the fit set's manifest
    fit_set: str


@dataclass
class DetectorResult:
    """One detector's (or combination's) scores of every set it has."""

    name: str
    main: str  # its main score
    nfe: dict[str, int | None]  # score -> UNet evaluations per image
    scores: dict[str, dict[str, pd.Series]]  # score -> set -> per image (indexed by image_index, or filename)
    images: dict[str, pd.DataFrame] = field(default_factory=dict)  # set -> filename (and image_index), per image
    details: dict[str, pd.DataFrame] = field(default_factory=dict)  # set -> long table (image, t, metric, z)
    members: dict[str, list[str]] = field(default_factory=dict)  # a combination's: score -> its detectors
    detector: Detector | None = None  # the detector as scored (e.g. with the start points kept)
    fit: dict | None = None  # the fit as plain JSON and the thresholds, for new images (ood/fits/<name>.json)


@dataclass
class MetricRow:
    ood_set: str
    detector: str
    score: str
    metrics: dict[str, float]
    n_in: int
    n_ood: int
    nfe: int | None
    intervals: dict[str, tuple[float, float]] | None

    def as_dict(self) -> dict:
        row = {"ood_set": self.ood_set, "detector": self.detector, "score": self.score, **self.metrics,
               "n_in": self.n_in, "n_ood": self.n_ood, "nfe_per_image": self.nfe}
        for metric, (low, high) in (self.intervals or {}).items():
            row[f"{metric}_low"], row[f"{metric}_high"] = low, high
        return row


@dataclass
class Evaluation:
    run: RunFiles
    options: Options
    ood_sets: list[str]
    results: list[DetectorResult]  # registry order, the combinations last
    rows: list[MetricRow]
    headline: DetectorResult | None  # the paper's detector, when it has results
    per_t: dict[str, dict[int, float]] = field(default_factory=dict)  # OOD set -> t -> AUROC of the headline from t

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([row.as_dict() for row in self.rows])

    def result(self, name: str) -> DetectorResult:
        return next(r for r in self.results if r.name == name)


def evaluate(run: RunFiles, options: Options = Options()) -> Evaluation:
    """Check, fit and score every detector with results in ``run``; raises ScoringError before any
    result if something is missing or inconsistent."""
    found = find_results(run, options)
    ood_sets = next((f for f in found if f.detector.name == HEADLINE), None)
    ood_sets = ([s for s in ood_sets.frames if s not in RESERVED_SETS] if ood_sets else
                sorted({s for f in found for s in f.frames} - set(RESERVED_SETS)))
    if not ood_sets:
        raise ScoringError(f"No OOD results (results_<Name>.csv) in {run.ood}. Run reconstruct.py with --run_out=1.")
    results, rows = [], []
    for item in found:
        result = score_detector(item, options)
        results.append(result)
        rows += metric_rows(result, ood_sets, options)
    combined = combine_detectors(results, [f.detector for f in found], ood_sets, options)
    for result in combined:
        rows += metric_rows(result, ood_sets, options)
    headline = next((r for r in results if r.name == HEADLINE), None)
    evaluation = Evaluation(run, options, ood_sets, results + combined, rows, headline)
    if headline is not None:
        evaluation.per_t = auroc_per_t(headline, ood_sets)
    return evaluation


# --- finding and checking the results -------------------------------------------------------------

def find_results(run: RunFiles, options: Options) -> list[Found]:
    """Every registered detector with results for its fit set, read and checked, in registry order."""
    classes = [detector_class(name) for name in DETECTORS]
    fit_sets = {cls: options.fit_on if cls.measures_fit_set else "val" for cls in classes}
    present = [cls for cls in classes if run.results(cls.folder(), fit_sets[cls]).exists()]
    for cls in classes:
        others = run.result_sets(cls.folder())
        if cls not in present and others:
            logger.warning("%s is left out: %s is missing (it has results for %s); measure that set with "
                           "reconstruct.py --detectors %s%s.", cls.name, run.results(cls.folder(), fit_sets[cls]),
                           ", ".join(others), cls.name, " --fit_ids" if fit_sets[cls] == "fit" else "")
    headline = detector_class(HEADLINE)
    if not present:
        raise ScoringError(f"{run.results(headline.folder(), 'val')} does not exist. Run reconstruct.py with "
                           "--run_val=1 --run_in=1 first.")
    if options.fit_on != "val" and not any(cls.measures_fit_set for cls in present):
        takers = ",".join(cls.name for cls in classes if cls.measures_fit_set)
        raise ScoringError(f"--fit_on={options.fit_on}: no detector results_{options.fit_on}.csv in {run.ood}/<detector>/; "
                           f"run reconstruct.py with --fit_ids and --detectors {takers} first.")
    found, reference, ood_sets = [], None, None
    for cls in present:
        item = read_detector_results(run, cls, fit_sets[cls], ood_sets, reference)
        if reference is None:
            reference = (item.paths[item.fit_set], item.settings)
        if cls is headline:
            ood_sets = [s for s in item.frames if s not in RESERVED_SETS]
        found.append(item)
    return found


def read_detector_results(run: RunFiles, cls, fit_set: str, ood_sets: list[str] | None,
                          reference: tuple[Path, dict] | None) -> Found:
    """One detector's results: its fit set, val, in and the OOD sets (``ood_sets``, or all it has),
    each with a manifest that agrees with the fit set's (and, on the model, with ``reference``'s).

    An OOD results file without a manifest was not written by reconstruct.py: skipped with a warning.
    """
    folder = cls.folder()
    fit_path = run.results(folder, fit_set)
    settings = read_manifest(fit_path)
    if settings is None:
        raise ScoringError(f"{fit_path} has no settings manifest ({fit_path.stem}.settings.json), so it was not "
                           "written by reconstruct.py (or its manifest was deleted). Re-make it with reconstruct.py "
                           f"--run_{fit_set}=1 --restart.")
    detector = cls.from_settings(settings)
    ood = [s for s in (ood_sets if ood_sets is not None else run.result_sets(folder)) if s not in RESERVED_SETS]
    frames, paths = {}, {}
    for name in dict.fromkeys([fit_set, "val", "in", *ood]):
        path = run.results(folder, name)
        if not path.exists():
            if name == "in":
                raise ScoringError(f"{path} does not exist. Run reconstruct.py with --run_val=1 --run_in=1 "
                                   f"(--detectors {cls.name}) first.")
            continue
        manifest = read_manifest(path)
        if manifest is None:
            if name in RESERVED_SETS:
                raise ScoringError(f"{path} has no settings manifest ({path.stem}.settings.json), so it was not "
                                   "written by reconstruct.py (or its manifest was deleted). Re-make it with "
                                   f"reconstruct.py --run_{name}=1 --restart.")
            logger.warning("Skipping %s: it has no settings manifest, so reconstruct.py did not write it.", path)
            continue
        # Each difference as (this file's value vs the other's).
        differences = manifest_differences(scored_settings(manifest), scored_settings(settings),
                                           (manifest.get("model_parts"), settings.get("model_parts")))
        other = fit_path
        if not differences and reference is not None:
            other, differences = reference[0], manifest_differences(
                model_settings(manifest), model_settings(reference[1]),
                (manifest.get("model_parts"), reference[1].get("model_parts")))
        if differences:
            raise ScoringError(
                f"{path} was made with other settings than {other} (its value vs that file's): "
                f"{'; '.join(differences)}. Results of "
                "different models or settings cannot be scored together. Re-run reconstruct.py for every set with "
                "one model and the same flags (--restart discards the old results).")
        frames[name], paths[name] = check_complete(detector.read(path), path, manifest), path
    check_fit_set_is_not_tested(frames, paths, fit_set)
    return Found(detector, frames, paths, settings, fit_set)


def check_complete(frame: pd.DataFrame, path: Path, manifest: dict) -> pd.DataFrame:
    """A results file holds what its manifest says it does: the bytes reconstruct.py wrote (their
    SHA-256), and the images it measured (their number and file names, in order)."""
    from ddpm_ood.utils.files import file_sha256
    from ddpm_ood.runs.layout import files_digest

    redo = f"Re-run reconstruct.py with --restart for that set ({path.stem[len('results_'):]})."
    if "results_sha256" in manifest and file_sha256(path) != manifest["results_sha256"]:
        raise ScoringError(f"{path} was changed after reconstruct.py wrote it (rows added, removed or edited: its "
                           f"SHA-256 is not the one its manifest records). {redo}")
    names = per_image(frame)["filename"].astype(str).tolist()
    if "n_images" in manifest and len(names) != manifest["n_images"]:
        raise ScoringError(f"{path} holds {len(names)} images, but its manifest records {manifest['n_images']}: rows "
                           f"are missing. {redo}")
    if "files_digest" in manifest and files_digest(names) != manifest["files_digest"]:
        raise ScoringError(f"{path} holds other images than its manifest records (their file names differ). {redo}")
    return frame


def check_fit_set_is_not_tested(frames: dict[str, pd.DataFrame], paths: dict[str, Path], fit_set: str) -> None:
    """The fit images are never test images: a fit set that shares files with the in-distribution
    test set or an OOD set is refused (a flip of a set counts as that set)."""
    if fit_set not in frames:
        return
    fitted = set(frames[fit_set]["filename"].astype(str))
    for name, frame in frames.items():
        if name in (fit_set, "val", "fit"):
            continue
        shared = fitted & set(frame["filename"].astype(str))
        if shared:
            raise ScoringError(
                f"{paths[fit_set]} (the fit set) and {paths[name]} share {len(shared)} image file(s), e.g. "
                f"{sorted(shared)[0]}: a fit must never see a test image. Fit on images that are not test images "
                "(the validation split, or reconstruct.py --fit_ids with training images).")


# --- scoring -------------------------------------------------------------------------------------

def score_detector(item: Found, options: Options) -> DetectorResult:
    """Fit on the fit set alone and score every set."""
    order = [s for s in item.frames if s != "val"] + ["val"]  # the in and OOD sets first, then val
    detector, frames = item.detector.for_scoring({s: item.frames[s] for s in ["val", *order[:-1]]}, item.paths,
                                                 options)
    fitted = detector.fit(frames[item.fit_set], seed=options.bootstrap_seed, source=str(item.paths[item.fit_set]))
    nfe = detector.scoring_nfe(item.settings)
    result = DetectorResult(detector.name, detector.primary, dict.fromkeys(detector.score_names, nfe),
                            {name: {} for name in detector.score_names}, detector=detector)
    for name in order:
        scored = detector.score(fitted, frames[name])
        for score, values in scored.scores.items():
            result.scores[score][name] = values
        result.images[name] = per_image(frames[name])
        if scored.details is not None:
            result.details[name] = scored.details
    result.fit = fit_record(result, options, detector.fit_state(fitted), item.fit_set, settings=detector.settings(),
                            fit_results=made_with(item.settings))
    return result


def per_image(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per image of a results frame: filename (and image_index), in the file's order."""
    from ddpm_ood.runs.results import image_key

    key = image_key(frame)
    return frame.drop_duplicates(key)[["filename", *(["image_index"] if key == "image_index" else [])]]


def combine_detectors(results: list[DetectorResult], detectors: list[Detector], ood_sets: list[str],
                      options: Options) -> list[DetectorResult]:
    """The combinations: each member's main score z-scored on the validation images, summed."""
    combination = detector_class(next(iter(COMBINATIONS)))
    by_name = {r.name: r for r in results}
    result = DetectorResult(combination.name, "", {}, {})
    states = {}
    for combo, members in combination.members(detectors).items():
        mains = {name: by_name[name].scores[by_name[name].main] for name in members}
        aligned = {}
        for name in [s for s in ["val", "in", *ood_sets] if all(s in mains[d] for d in members)]:
            series = [mains[d][name] for d in members]
            if any(not s.index.equals(series[0].index) for s in series):
                logger.warning("%s: the detectors scored different images of %s; leaving it out.", combo, name)
                continue
            aligned[name] = pd.DataFrame({d: s.to_numpy() for d, s in zip(members, series)})
        if not {"val", "in"} <= set(aligned):
            continue
        costs = [by_name[d].nfe[by_name[d].main] for d in members]
        fitted = combination.fit(aligned["val"], members)
        result.scores[combo] = {name: pd.Series(combination.score(fitted, values, members),
                                                index=mains[members[0]][name].index) for name, values in aligned.items()}
        result.nfe[combo] = None if None in costs else sum(costs)
        result.members[combo], states[combo] = members, fitted.to_state()
    if not result.scores:
        return []
    result.main = next(iter(result.scores))
    result.fit = fit_record(result, options, states, "val", members=result.members)
    return [result]


def metric_rows(result: DetectorResult, ood_sets: list[str], options: Options) -> list[MetricRow]:
    """One row per (score, OOD set): the OOD metrics and their bootstrap intervals."""
    rows = []
    for score, by_set in result.scores.items():
        in_scores = by_set["in"].to_numpy()
        for name in (s for s in ood_sets if s in by_set):
            ood_scores = by_set[name].to_numpy()
            intervals = (bootstrap_intervals(in_scores, ood_scores, options.bootstrap, options.bootstrap_seed)
                         if options.bootstrap else None)
            rows.append(MetricRow(name, result.name, score, ood_metrics(in_scores, ood_scores), len(in_scores),
                                  len(ood_scores), result.nfe[score], intervals))
    return rows


def auroc_per_t(result: DetectorResult, ood_sets: list[str]) -> dict[str, dict[int, float]]:
    """AUROC of each OOD set from each start point t alone (the headline's main score restricted to t)."""
    parts = {name: result.detector.per_t(details) for name, details in result.details.items()}
    if parts.get("in") is None:
        return {}
    ts = sorted(int(t) for t in parts["in"].columns)
    return {name: {t: auroc(parts["in"][t].to_numpy(), parts[name][t].to_numpy()) for t in ts} for name in ood_sets}
