"""Score images as OOD from their reconstruction errors and report AUROC.

    python ood_detection.py --output_dir=${output_root} --model_name=fashionmnist

Reads OUTPUT_DIR/MODEL_NAME/ood/results_val.csv (z-score statistics), results_in.csv (the
in-distribution test set) and every other results_<Name>.csv (one OOD set each). Higher score
= more OOD; OOD is the positive class. Prints one line per set and score, and writes
ood/summary_auroc.csv (columns ood_set, score, auroc, n_in, n_ood).

Every results file is checked before anything is printed: all must come from one model with
one set of reconstruction settings (their settings manifests, results_<Name>.settings.json),
and hold one finite value per image, start point and metric. A results_<Name>.csv without a
manifest was not written by reconstruct.py: it is skipped with a warning.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from src.cli import plain_name, positive_int, run_main

logger = logging.getLogger("ddpm_ood")
SCORES = {"mse+lpips": ["mse", "lpips"], "mse": ["mse"], "lpips": ["lpips"]}
RESERVED = ("val", "in")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    parser.add_argument("--model_name", required=True, type=plain_name,
                        help="Run name (a plain name); reads OUTPUT_DIR/MODEL_NAME/ood/results_*.csv.")
    parser.add_argument("--max_t", type=positive_int, default=None, help="Use only start points t < MAX_T.")
    parser.add_argument("--t_skip", type=positive_int, default=1, help="Use every T_SKIP-th start point. Default 1.")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    return parser.parse_args(argv)


def load_results(ood_dir: Path):
    """Read and check every results file; returns (val, in, {ood name: frame}) or raises ScoringError.

    The validation and in-distribution files must have settings manifests; an OOD file without
    one is skipped with a warning. All manifests must agree on the shared settings.
    """
    from src.scoring import ScoringError, read_results, read_settings, settings_mismatch

    for needed in ("results_val.csv", "results_in.csv"):
        if not (ood_dir / needed).exists():
            raise ScoringError(f"{ood_dir / needed} does not exist. Run reconstruct.py with --run_val=1 --run_in=1 first.")
    reference_path = ood_dir / "results_val.csv"
    reference = read_settings(reference_path)
    paths = [reference_path, ood_dir / "results_in.csv"]
    paths += sorted(p for p in ood_dir.glob("results_*.csv") if p.stem[len("results_"):] not in RESERVED)
    frames = {}
    for path in paths:
        name = path.stem[len("results_"):]
        settings = reference if path == reference_path else read_settings(path)
        if settings is None:
            if name in RESERVED:
                raise ScoringError(f"{path} has no settings manifest ({path.stem}.settings.json), so it was not "
                                   "written by reconstruct.py (or its manifest was deleted). Re-make it with "
                                   f"reconstruct.py --run_{name}=1 --restart.")
            logger.warning("Skipping %s: it has no settings manifest, so reconstruct.py did not write it.", path)
            continue
        differences = settings_mismatch(reference, settings)
        if differences:
            raise ScoringError(
                f"{path} was made with other settings than {reference_path}: {'; '.join(differences)}. Results "
                "of different models or settings cannot be scored together. Re-run reconstruct.py for every set "
                "with one model and the same flags (--restart discards the old results).")
        frames[name] = read_results(path)
    ood = {name: frame for name, frame in frames.items() if name not in RESERVED}
    if not ood:
        raise ScoringError(f"No OOD results (results_<Name>.csv) in {ood_dir}. Run reconstruct.py with --run_out=1.")
    return frames["val"], frames["in"], ood


def main(args: argparse.Namespace):
    import pandas as pd

    from src.files import save_csv_atomic
    from src.scoring import ScoringError, auroc, available_metrics, fit_validation_stats, score_frame, select_t

    ood_dir = args.output_dir / args.model_name / "ood"
    val_all, in_frame, ood_frames = load_results(ood_dir)
    val = select_t(val_all, args.max_t, args.t_skip)
    if val.empty:
        raise ScoringError(f"No validation start points left with --max_t={args.max_t}.")
    metrics = available_metrics(val)
    if "lpips" not in metrics:
        logger.warning("The results hold no LPIPS values (an MSE-only run): reporting MSE-only AUROC.")
    stats = fit_validation_stats(val, metrics, source=str(ood_dir / "results_val.csv"))
    kept_t = sorted(val["t"].unique())
    logger.info("start points used: %s", [int(t) for t in kept_t])

    def check_t(frame, path):
        unknown = sorted(int(t) for t in set(frame["t"]) - set(val_all["t"]))
        missing = sorted(int(t) for t in set(kept_t) - set(frame["t"]))
        if unknown or missing:
            problem = (f"has start points t={unknown} that the validation results lack" if unknown
                       else f"lacks start points t={missing} that the validation results have")
            raise ScoringError(f"{path} {problem}. Reconstruct all sets with the same --num_inference_steps, "
                               "--inference_skip_factor and start-point limits.")
        frame = frame[frame["t"].isin(kept_t)]
        missing_metrics = [m for m in metrics if m not in available_metrics(frame)]
        if missing_metrics:
            raise ScoringError(f"{path} lacks {missing_metrics} values that the validation results have; "
                               "re-run reconstruct.py.")
        return frame

    # Every check passes before anything is printed.
    sets = {"in": check_t(in_frame, ood_dir / "results_in.csv")}
    sets.update({name: check_t(frame, ood_dir / f"results_{name}.csv") for name, frame in ood_frames.items()})

    rows = []
    for score_name, chosen in SCORES.items():
        if not set(chosen) <= set(metrics):
            continue
        scores = {name: score_frame(frame, stats, chosen, source=name).to_numpy() for name, frame in sets.items()}
        for ood_name in ood_frames:
            value = auroc(scores["in"], scores[ood_name])
            rows.append({"ood_set": ood_name, "score": score_name, "auroc": value,
                         "n_in": len(scores["in"]), "n_ood": len(scores[ood_name])})
            suffix = "" if score_name == default_score(metrics) else f" ({score_name})"
            print(f"AUC for {args.model_name} vs {ood_name}{suffix}: {100 * value:.1f}")
    summary = pd.DataFrame(rows)
    save_csv_atomic(ood_dir / "summary_auroc.csv", summary)
    logger.info("wrote %s", ood_dir / "summary_auroc.csv")
    return summary


def default_score(metrics: list[str]) -> str:
    """The paper's score: MSE + LPIPS z-scores, or MSE alone for an MSE-only run."""
    return "mse+lpips" if "lpips" in metrics else "mse"


if __name__ == "__main__":
    run_main(main, parse_args)
