"""The paper's detector (Graham et al. 2023): reconstruction errors from several start points.

Each image is noised to every start point t, reconstructed with PLMS down to t = 0
(:mod:`ddpm_ood.diffusion.reconstruction`), and compared with its input by MSE and LPIPS. Per t, each metric
is z-scored with the validation set's mean and std; a score is the mean over t of the sum of
its metrics' z-scores. Its results are ``ood/results_<set>.csv``, one row per (image, t): the
paper's file names.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ddpm_ood.detectors.base import Detector, Scored, checked_draws, checked_timesteps, draws_setting
from ddpm_ood.utils.errors import DataError, ScoringError
from ddpm_ood.diffusion.reconstruction import NOISE
from ddpm_ood.runs.results import REDO, csv_line, first_bad, image_key, read_results_csv
from ddpm_ood.metrics.scoring import ZScore, select_start_t, show_value

logger = logging.getLogger("ddpm_ood")

METRIC_COLUMNS = {"mse": "mse", "lpips": "perceptual_difference"}  # metric -> its results column
METRICS = tuple(METRIC_COLUMNS)
SCORES = {"mse+lpips": ["mse", "lpips"], "mse": ["mse"], "lpips": ["lpips"]}
RESULT_COLUMNS = ("filename", "type", "t", "mse", "perceptual_difference")


def default_score(metrics: Sequence[str]) -> str:
    """The paper's score: MSE + LPIPS z-scores, or MSE alone for an MSE-only run."""
    return "mse+lpips" if "lpips" in metrics else "mse"


def available_scores(metrics: Sequence[str]) -> list[str]:
    """The scores a run's metrics allow, the paper's first."""
    return sorted((s for s, chosen in SCORES.items() if set(chosen) <= set(metrics)),
                  key=lambda s: s != default_score(metrics))


def nfe(start_indices: Sequence[int]) -> int:
    """UNet evaluations per image: a start at grid index j takes j + 1 PLMS steps plus the first
    step's corrector (350 for the paper's 100 steps and skip 16)."""
    return int(sum(int(j) + 2 for j in start_indices))


def parse_metrics(text: str) -> list[str]:
    metrics = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or "mse" not in metrics:
        raise DataError(f"--metrics {text!r}: choose 'mse' or 'mse,lpips' (unknown: {unknown}).")
    return metrics


def available_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics a results frame holds values for ("mse", and "lpips" unless it was MSE-only)."""
    return [name for name, column in METRIC_COLUMNS.items() if frame[column].notna().all()]


class ReconDetector(Detector):
    name = "recon"
    results_folder = ""  # ood/results_<set>.csv, the paper's names
    measures_fit_set = False  # z-scored with the validation set itself
    expensive = True

    def __init__(self, num_inference_steps: int, start_t: Sequence[int], metrics: Sequence[str], lpips_pad: int = 2,
                 clamp_for_lpips: bool = False, fused: bool = True, noise: str = NOISE, noise_draws: int = 1,
                 grid_offset: int = 1):
        if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
            raise DataError(f"recon: num_inference_steps = {num_inference_steps!r} must be a positive integer.")
        if grid_offset not in (0, 1):
            raise DataError(f"recon: grid_offset = {grid_offset!r} must be 1 (the paper's grid) or 0 (PNDM's).")
        self.num_inference_steps, self.grid_offset = num_inference_steps, int(grid_offset)
        try:
            self.start_t = checked_timesteps(start_t)
        except (TypeError, ValueError) as err:
            raise DataError(f"recon: start points {start_t!r}: {err}.") from None
        self.metrics = parse_metrics(",".join(metrics) if not isinstance(metrics, str) else metrics)
        if not (isinstance(lpips_pad, int) and lpips_pad >= 0):
            raise DataError(f"recon: lpips_pad = {lpips_pad!r} must be a non-negative integer.")
        self.lpips_pad, self.clamp_for_lpips, self.fused = int(lpips_pad), bool(clamp_for_lpips), fused
        self.noise, self.noise_draws = noise, checked_draws(noise_draws, self.name)
        self.score_names = tuple(available_scores(self.metrics))
        self.lpips = None  # the LPIPS metric, once loaded (load_lpips)
        self._sampler = None
        self._keep, self._kept = 0, {}  # keep_examples: (first image, draw) -> its batch's reconstructions

    # --- settings ------------------------------------------------------------------------

    @classmethod
    def from_args(cls, args, model) -> "ReconDetector":
        from ddpm_ood.diffusion.ddpm import PLMSSampler, ddpm_ood_head_start_points

        metrics = parse_metrics(args.metrics)
        sampler = PLMSSampler(model.schedule)
        head = getattr(args, "start_points", "paper") == "ddpm-ood-head"  # ddpm-ood's later start points, PNDM's grid
        try:
            sampler.set_timesteps(args.num_inference_steps, offset=0 if head else 1)
            grid_t = ddpm_ood_head_start_points(args.num_inference_steps, args.inference_skip_factor,
                                                model.schedule.num_timesteps) if head else \
                sampler.grid[sampler.start_indices(args.inference_skip_factor)].tolist()
        except ValueError as err:
            raise DataError(f"{err} (--num_inference_steps={args.num_inference_steps}, "
                            f"--inference_skip_factor={args.inference_skip_factor})") from err
        start_t = select_start_t(grid_t, args.max_start_t, args.min_start_t)
        if not start_t:
            raise DataError(f"--min_start_t/--max_start_t leave none of the start points {grid_t}.")
        detector = cls(args.num_inference_steps, start_t, metrics, args.lpips_pad, args.clamp_for_lpips, args.fused,
                       noise_draws=args.noise_draws, grid_offset=0 if head else 1)
        detector.bind(model.schedule)
        detector.prepare(model.device, args.lpips_weights)
        return detector

    def settings(self) -> dict:
        return {"num_inference_steps": self.num_inference_steps, "start_t": list(self.start_t),
                "metrics": list(self.metrics), "lpips_pad": self.lpips_pad, "clamp_for_lpips": self.clamp_for_lpips,
                **draws_setting(self.noise_draws), **({} if self.grid_offset == 1 else {"grid_offset": self.grid_offset})}

    @classmethod
    def from_settings(cls, settings: dict) -> "ReconDetector":
        """``settings``: a results manifest (its ``noise`` scheme is the run's) or the detector's own."""
        return cls(settings["num_inference_steps"], settings["start_t"], settings["metrics"], settings["lpips_pad"],
                   settings.get("clamp_for_lpips", False), noise=settings.get("noise", NOISE),
                   noise_draws=settings.get("noise_draws", 1), grid_offset=settings.get("grid_offset", 1))

    def bind(self, schedule) -> None:
        """The PLMS grid of ``schedule`` for these settings (start points must be grid points)."""
        from ddpm_ood.diffusion.ddpm import PLMSSampler

        if self._sampler is None or self._sampler.schedule is not schedule:
            sampler = PLMSSampler(schedule)
            sampler.set_timesteps(self.num_inference_steps, self.grid_offset)
            self.start_indices = np.asarray([sampler.index_of(t) for t in self.start_t])
            self._sampler = sampler

    def prepare(self, device, lpips_weights: Path | None = None) -> None:
        """The LPIPS metric, when the metrics include it (fails before any work without its weights)."""
        self.load_lpips(device, lpips_weights)

    def load_lpips(self, device, weights: Path | None = None) -> None:
        if "lpips" in self.metrics:
            from ddpm_ood.metrics.distances import LPIPSMetric

            self.lpips = LPIPSMetric(weights, pad=self.lpips_pad).to(device)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.start_t)} reconstructions per image from t = {self.start_t}; "
                f"{self.nfe()} model evaluations per image")

    def progress_label(self, set_name: str) -> str:
        return f"reconstructing {set_name}"

    def nfe(self) -> int:
        return self.noise_draws * nfe(self.start_indices)

    def cost(self) -> dict:
        # Per start point too, for ood_detection.py's --max_start_t.
        return {"nfe_per_image": self.nfe(),
                "nfe_per_start": {str(t): self.noise_draws * nfe([j]) for t, j in zip(self.start_t, self.start_indices)}}

    def scoring_nfe(self, settings: dict) -> int | None:
        """The cost of the start points scored: reconstruct.py records each start's (grid index + 2)."""
        per_start = settings.get("nfe_per_start") or {}
        if not all(str(t) in per_start for t in self.start_t):
            return None
        return sum(per_start[str(t)] for t in self.start_t)

    # --- measuring ---------------------------------------------------------------------------

    def measure(self, model, images, filenames, split_type, batch_size, seed, progress=True, index_offset=0):
        from ddpm_ood.diffusion.reconstruction import measure_split

        self.bind(model.schedule)
        return measure_split(model.model_fn, model.schedule, self._sampler, images, filenames, split_type,
                             self.start_indices, batch_size, seed, model.device, self.lpips, fused=self.fused,
                             progress=progress, index_offset=index_offset, clamp_for_lpips=self.clamp_for_lpips,
                             space=model.space, noise=self.noise, draws=self.noise_draws,
                             reconstructed=self._keep_batch if self._keep else None)

    def keep_examples(self, n: int) -> None:
        self._keep, self._kept = int(n), {}

    def _keep_batch(self, first: int, draw: int, reconstructions) -> None:
        """measure_split's hook: a batch's reconstructions (B, K, C, *spatial), clamped, kept for its images
        among the set's first ``keep``."""
        if first < self._keep:
            self._kept[first, draw] = reconstructions[:self._keep - first].cpu().numpy()

    def _kept_examples(self, images) -> dict | None:
        """The examples of ``images`` (the set's first n) from what measuring kept, if it kept all of them (a
        resumed run measured some before; another rank or --shard job measured others: then None)."""
        n = len(images)
        draws = []
        for draw in range(self.noise_draws):
            parts, expected = [], 0
            for first in sorted(f for f, d in self._kept if d == draw):
                if first != expected:
                    return None
                parts.append(self._kept[first, draw])
                expected += len(parts[-1])
            if expected < n:
                return None
            draws.append(np.concatenate(parts)[:n])
        examples = {"inputs": images.cpu().numpy(), "reconstructions": draws[0],
                    "t": np.asarray(self.start_t)}
        if self.noise_draws > 1:
            examples["more_reconstructions"] = np.stack(draws[1:], axis=1)
        return examples

    def examples(self, model, images, seed) -> dict:
        """The first images and their reconstructions from every start point, as the results were made: those
        measuring kept (:meth:`keep_examples`), else made again with the same noise."""
        from ddpm_ood.diffusion.reconstruction import reconstruction_examples

        kept = self._kept_examples(images)
        if kept is not None:
            return kept
        self.bind(model.schedule)
        return reconstruction_examples(model.model_fn, model.schedule, self._sampler, images, self.start_indices,
                                       seed, model.device, model.space, self.noise, self.noise_draws)

    # --- scoring -----------------------------------------------------------------------------

    def read(self, path: Path) -> pd.DataFrame:
        frame = read_results_csv(path, RESULT_COLUMNS)
        check_rows(frame, path)
        return frame

    def for_scoring(self, frames: dict[str, pd.DataFrame], paths: dict[str, Path], options):
        """The start points scored (options.max_start_t, min_start_t and t_skip applied to the
        validation results' own), and every set checked to have exactly those."""
        val_t = set(frames["val"]["t"])
        kept = select_start_t(val_t, options.max_start_t, options.min_start_t, options.t_skip)
        if not kept:
            raise ScoringError(f"No validation start points left with --max_start_t={options.max_start_t} "
                               f"--min_start_t={options.min_start_t}.")
        logger.info("start points used: %s", kept)
        metrics = available_metrics(frames["val"][frames["val"]["t"].isin(kept)])
        if "lpips" not in metrics:
            logger.warning("The results hold no LPIPS values (an MSE-only run): reporting MSE-only AUROC.")
        checked = {}
        for name, frame in frames.items():
            check_start_points(frame, val_t, kept, paths[name])
            frame = frame[frame["t"].isin(kept)]
            missing = [m for m in metrics if m not in available_metrics(frame)]
            if missing:
                raise ScoringError(f"{paths[name]} lacks {missing} values that the validation results have; "
                                   "re-run reconstruct.py.")
            checked[name] = frame
        scoring = ReconDetector(self.num_inference_steps, kept, metrics, self.lpips_pad, self.clamp_for_lpips,
                                grid_offset=self.grid_offset)
        return scoring, checked

    def fit(self, frame: pd.DataFrame, seed: int = 0, source: str | None = None) -> ZScore:
        """Per start point t, the mean and std of each metric over the validation images."""
        return ZScore.fit(frame, self.metric_columns(), by="t", source=source or "The validation results")

    def fit_state(self, fitted: ZScore) -> dict:
        return fitted.to_state()

    def load_fit(self, state: dict) -> ZScore:
        return ZScore.from_state(state)

    def metric_columns(self) -> list[str]:
        return [METRIC_COLUMNS[m] for m in self.metrics]

    def score(self, fitted: ZScore, frame: pd.DataFrame) -> Scored:
        """Each score: per image, the mean over t of the sum of its metrics' z-scores (computed once,
        and returned as the long table of details too)."""
        frame = frame[frame["t"].isin(self.start_t)]
        key = image_key(frame)
        z = fitted.apply(frame, self.metric_columns())
        scores = {}
        for name in self.score_names:
            per_row = sum(z[METRIC_COLUMNS[m]] for m in SCORES[name])
            scores[name] = per_row.groupby(frame[key], sort=False).mean()
        details = pd.concat([pd.DataFrame({key: frame[key], "t": frame["t"], "metric": m, "z": z[METRIC_COLUMNS[m]]})
                             for m in self.metrics], ignore_index=True)
        return Scored(scores, details)

    def per_t(self, details: pd.DataFrame) -> pd.DataFrame:
        """The paper's score restricted to one start point t: per image, the sum of its main score's
        metrics' z-scores at t (rows: images, columns: t)."""
        key = image_key(details)
        wide = {m: part.pivot(index=key, columns="t", values="z") for m, part in details.groupby("metric", sort=False)}
        order = pd.unique(details[key])
        return sum(wide[m] for m in SCORES[self.primary]).loc[order]


def check_start_points(frame: pd.DataFrame, val_t: set, kept: Sequence[int], path: Path) -> None:
    """The one start-point check: a set has no start point the validation results lack, and every one scored."""
    unknown = sorted(int(t) for t in set(frame["t"]) - set(val_t))
    missing = sorted(int(t) for t in set(kept) - set(frame["t"]))
    if unknown or missing:
        problem = (f"has start points t={unknown} that the validation results lack" if unknown
                   else f"lacks start points t={missing} that the validation results have")
        raise ScoringError(f"{path} {problem}. Reconstruct all sets with the same --num_inference_steps, "
                           "--inference_skip_factor and start-point limits.")


def check_rows(frame: pd.DataFrame, path: Path) -> None:
    """Every value a number, every metric finite (LPIPS may be empty throughout: an MSE-only
    run), and exactly one row per (image, t) for every t the file holds."""
    for column in ("t", *METRIC_COLUMNS.values()):
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce")
        text = values.isna() & raw.notna()
        if text.any():
            at = first_bad(text)
            raise ScoringError(f"{path} {csv_line(frame, at)}: {column} = {show_value(raw.iloc[at])} is not a number. {REDO}")
        if column == "perceptual_difference" and values.isna().all():
            frame[column] = values
            continue  # an MSE-only run
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            at = first_bad(bad)
            raise ScoringError(f"{path} {csv_line(frame, at)}: {column} = {show_value(raw.iloc[at])} is not a finite "
                               f"number. {REDO}")
        frame[column] = values
    if (frame["t"] != frame["t"].round()).any():
        at = first_bad(frame["t"] != frame["t"].round())
        raise ScoringError(f"{path} {csv_line(frame, at)}: t = {show_value(frame['t'].iloc[at])} is not an integer. {REDO}")
    frame["t"] = frame["t"].astype(np.int64)
    key = image_key(frame)
    duplicated = frame.duplicated([key, "t"], keep="first").to_numpy()
    if duplicated.any():
        at = first_bad(duplicated)
        raise ScoringError(f"{path} {csv_line(frame, at)}: a second row for {key} {show_value(frame[key].iloc[at])} and "
                           f"t = {frame['t'].iloc[at]}. {REDO}")
    all_t = set(frame["t"].unique())
    counts = frame.groupby(key, sort=False)["t"].size()
    short = counts[counts < len(all_t)]
    if len(short):
        image = short.index[0]
        missing = sorted(int(t) for t in all_t - set(frame.loc[frame[key] == image, "t"]))
        raise ScoringError(f"{path}: {key} {show_value(image)} has no row for t = {missing} (the file's other images "
                           f"have them). {REDO}")
