"""The OOD detectors of one trained eps-model, registered in one place.

Sign convention (as everywhere here): a higher score means more out-of-distribution.

==========  ==============================================================  ====================
name        what it measures per image (module)                             UNet calls per image
==========  ==============================================================  ====================
recon       the paper's: MSE and LPIPS of PLMS reconstructions from          sum over starts of
            several start points, z-scored per t on the validation set      (grid index + 2)
            (:mod:`ddpm_ood.detectors.recon`; scores mse+lpips, mse, lpips)
path        DiffPath (Heng et al. 2024): statistics of the eps along the    path_steps (10)
            deterministic DDIM path from the image towards noise
            (:mod:`ddpm_ood.detectors.path`; scores path-6d, path-1d)
msma        MSMA (Mahmood et al. 2021): norms of the score at several       msma_levels (10)
            noise levels at the noise-free image (:mod:`ddpm_ood.detectors.msma`)
denoise     eps-prediction error at several t with seeded noise,            denoise_levels (10)
            z-scored per t on the validation set (:mod:`ddpm_ood.detectors.denoise`)
partial     pDDPM / cDDPM: |x0 - x0_hat| of a one-call x0 prediction from    len(partial_t) (3)
            t = 250, 500, 750, z-scored per t; its residuals are maps
            (:mod:`ddpm_ood.detectors.partial`)
combo       (scored, never measured) the sum of every measured detector's   the sum of theirs
            validation-z-scored main score; combo-cheap leaves out the
            expensive ones (:mod:`ddpm_ood.detectors.combined`)
==========  ==============================================================  ====================

Every detector has the contract of :class:`ddpm_ood.detectors.base.Detector`: measure each image,
fit on in-distribution images that are not test images, score. ``reconstruct.py --detectors``
measures them (each in the results folder its class names), ``ood_detection.py`` finds, fits and
scores every one that has results. The scripts hold no detector names: a new detector is one
module with a :class:`~ddpm_ood.detectors.base.Detector` subclass, one entry in ``DETECTORS`` below
(with its command-line knobs) and its test.

This module imports nothing heavy: the scripts' parsers (and ``--help``) read it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    """A command-line setting of a detector; the scripts add one flag per knob.

    ``kind``: "int" (range-checked by the parser), "text", "choice" (one of ``choices``), "path" or "switch"
    (--x / --no-x).
    ``measure``: a flag of reconstruct.py; ``score``: a flag of ood_detection.py too (where it
    selects among what was measured, or applies to --score_ids).
    """

    flag: str
    default: object
    help: str
    kind: str = "int"  # "choice": one of ``choices``
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    aliases: tuple[str, ...] = ()
    measure: bool = True
    score: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-")


@dataclass(frozen=True)
class Entry:
    target: str  # "module:Class", imported on first use
    knobs: tuple[Knob, ...] = ()


# The start points: one vocabulary for reconstruct.py (which ones to reconstruct from) and
# ood_detection.py (which of those to score with).
START_POINT_KNOBS = (
    Knob("--max_start_t", None, "Keep only start points t < MAX_START_T (low starts are cheap and carry much of the "
         "signal; the paper used all). In ood_detection.py: score with those of the measured ones (--max_t, the "
         "seed's name, is the same flag). Default: all.", minimum=1, aliases=("--max_t",), score=True),
    Knob("--min_start_t", None, "Keep only start points t >= MIN_START_T (near t = 1 the error mostly measures how "
         "smooth an image is). Default: all.", minimum=0, score=True),
    Knob("--t_skip", 1, "Score with every T_SKIP-th of the start points kept (ood_detection.py). Default 1.",
         minimum=1, measure=False, score=True),
)

# Averaging over noise draws: for the detectors whose measure draws noise (the paper's and denoise).
NOISE_DRAWS = Knob("--noise_draws", 1, "Average each noise-drawing detector's measurements (recon's MSE and LPIPS per "
                   "start point, denoise's errors) over this many independent noise draws: less score noise for "
                   "that many times the model evaluations. Default 1 (as the paper).", minimum=1)

DETECTORS = {
    "recon": Entry("ddpm_ood.detectors.recon:ReconDetector", (
        Knob("--num_inference_steps", 100, "PLMS grid size S: points 1, 1+T//S, ... Default 100 (t = 1, 11, ..., 991).",
             minimum=1),
        Knob("--inference_skip_factor", 16, "Start points are grid[::skip]; 16 on 100 steps gives 7 (t = 1, 161, ..., "
             "961).", minimum=1),
        Knob("--start_points", "paper", "paper: grid[::skip] of the grid from t = 1 (the paper's code); ddpm-ood-head: "
             "ddpm-ood's later code's, reversed(PNDM timesteps)[1::skip] of the grid 0, T//S, ... (from t = T//S; "
             "docs/fidelity.md). Default paper.", kind="choice", choices=("paper", "ddpm-ood-head")),
        *START_POINT_KNOBS,
        Knob("--metrics", "mse,lpips", "Comma-separated metrics: mse, lpips. 'mse' alone skips LPIPS (no AlexNet "
             "weights needed).", kind="text"),
        Knob("--lpips_weights", None, "torchvision AlexNet weights file (alexnet-owt-7be5be79.pth); default: the torch "
             "hub cache.", kind="path", score=True),
        Knob("--lpips_pad", 2, "Zero padding on each side for images under 32x32 before LPIPS (28 -> 32). Default 2.",
             minimum=0),
        Knob("--clamp_for_lpips", False, "Clamp colour reconstructions to [0, 1] before LPIPS too. Default off, as the "
             "paper's code: MSE (and grayscale LPIPS) use the clamped reconstruction, colour LPIPS the unclamped one.",
             kind="switch"),
        Knob("--fused", True, "Advance all start points of a batch together (default); --no-fused runs them one by "
             "one (same results).", kind="switch"),
        NOISE_DRAWS,
    )),
    "path": Entry("ddpm_ood.detectors.path:PathDetector", (
        Knob("--path_steps", 10, "DDIM steps of the path detector's path from the image to noise (its UNet calls per "
             "image; at least 2, for its curvature; at most the model's timesteps). Default 10, as DiffPath.",
             minimum=2),
    )),
    "msma": Entry("ddpm_ood.detectors.msma:MSMADetector", (
        Knob("--msma_levels", 10, "Noise levels of the msma detector (its UNet calls per image; at most the model's "
             "timesteps). Default 10, as MSMA.", minimum=1),
    )),
    "denoise": Entry("ddpm_ood.detectors.denoise:DenoiseDetector", (
        Knob("--denoise_levels", 10, "Timesteps of the denoise detector (its UNet calls per image; at most the "
             "model's timesteps). Default 10.", minimum=1),
        NOISE_DRAWS,
    )),
    "partial": Entry("ddpm_ood.detectors.partial:PartialDetector", (
        Knob("--partial_t", "250,500,750", "Timesteps of the partial-diffusion detector (pDDPM / cDDPM: noise to t, "
             "predict x0 in one call, residual |x0 - x0_hat|; one UNet call per t). Default 250,500,750 (cDDPM's; "
             "pDDPM's is 500).", kind="text"),
    )),
}
# Scored from the measured detectors' scores, never measured themselves.
COMBINATIONS = {"combo": Entry("ddpm_ood.detectors.combined:Combination")}
DEFAULT_DETECTORS = ("recon",)  # the paper's score alone: the seed's command lines are unchanged
HEADLINE = DEFAULT_DETECTORS[0]  # the paper's: its main score is the `score` column, the AUC lines, the figures


def parse_detectors(text: str) -> list[str]:
    """``recon,path`` -> ['recon', 'path']; ``all`` -> every detector. Raises ValueError."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(DETECTORS)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        raise ValueError(f"unknown detector(s) {unknown or text!r}; choose from {', '.join(DETECTORS)}, or 'all'")
    return list(dict.fromkeys(names))


def measure_knobs() -> list[Knob]:
    """Every detector's reconstruct.py flags, each once, in registry order."""
    return _unique(k for entry in DETECTORS.values() for k in entry.knobs if k.measure)


def score_knobs() -> list[Knob]:
    """The knobs ood_detection.py takes as well."""
    return _unique(k for entry in DETECTORS.values() for k in entry.knobs if k.score)


def _unique(knobs) -> list[Knob]:
    return list({k.flag: k for k in knobs}.values())


def detector_class(name: str):
    """The Detector subclass registered as ``name`` (imported on first use)."""
    module, cls = {**DETECTORS, **COMBINATIONS}[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def detector_help(combinations: bool = False) -> str:
    return ", ".join([*DETECTORS, *(COMBINATIONS if combinations else ())])
