"""Score images as OOD from their reconstruction errors and report AUROC.

    python ood_detection.py --output_dir=${output_root} --model_name=fashionmnist

Reads OUTPUT_DIR/MODEL_NAME/ood/results_val.csv (z-score statistics), results_in.csv (the
in-distribution test set) and every other results_<Name>.csv (one OOD set each). Higher score
= more OOD; OOD is the positive class. Prints one line per set and score, and writes
ood/summary_auroc.csv (columns ood_set, score, auroc, n_in, n_ood).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

from src.cli import positive_int, run_main
from src.files import save_csv_atomic
from src.scoring import (ScoringError, auroc, available_metrics, fit_validation_stats, read_results, score_frame,
                         select_t)

logger = logging.getLogger("ddpm_ood")
SCORES = {"mse+lpips": ["mse", "lpips"], "mse": ["mse"], "lpips": ["lpips"]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    parser.add_argument("--model_name", required=True, help="Run name; reads OUTPUT_DIR/MODEL_NAME/ood/results_*.csv.")
    parser.add_argument("--max_t", type=int, default=None, help="Use only start points t < MAX_T.")
    parser.add_argument("--t_skip", type=positive_int, default=1, help="Use every T_SKIP-th start point. Default 1.")
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> pd.DataFrame:
    ood_dir = args.output_dir / args.model_name / "ood"
    for needed in ("results_val.csv", "results_in.csv"):
        if not (ood_dir / needed).exists():
            raise ScoringError(f"{ood_dir / needed} does not exist. Run reconstruct.py with --run_val=1 --run_in=1 first.")
    ood_files = sorted(p for p in ood_dir.glob("results_*.csv") if p.stem not in ("results_val", "results_in"))
    if not ood_files:
        raise ScoringError(f"No OOD results (results_<Name>.csv) in {ood_dir}. Run reconstruct.py with --run_out=1.")

    val_all = read_results(ood_dir / "results_val.csv")
    val = select_t(val_all, args.max_t, args.t_skip)
    if val.empty:
        raise ScoringError(f"No validation start points left with --max_t={args.max_t}.")
    metrics = available_metrics(val)
    if "lpips" not in metrics:
        logger.warning("The results hold no LPIPS values (an MSE-only run): reporting MSE-only AUROC.")
    stats = fit_validation_stats(val, metrics)
    kept_t = sorted(val["t"].unique())
    logger.info("start points used: %s", [int(t) for t in kept_t])

    def scores_of(path: Path, chosen: list[str]):
        frame = read_results(path)
        unknown = sorted(int(t) for t in set(frame["t"]) - set(val_all["t"]))
        missing = sorted(int(t) for t in set(kept_t) - set(frame["t"]))
        if unknown or missing:
            problem = (f"has start points t={unknown} that the validation results lack" if unknown
                       else f"lacks start points t={missing} that the validation results have")
            raise ScoringError(f"{path} {problem}. Reconstruct all sets with the same --num_inference_steps, "
                               "--inference_skip_factor and start-point limits.")
        frame = frame[frame["t"].isin(kept_t)]
        missing = [m for m in chosen if m not in available_metrics(frame)]
        if missing:
            raise ScoringError(f"{path} lacks {missing} values that the validation results have; re-run reconstruct.py.")
        return score_frame(frame, stats, chosen, source=str(path)).to_numpy()

    rows = []
    for score_name, chosen in SCORES.items():
        if not set(chosen) <= set(metrics):
            continue
        in_scores = scores_of(ood_dir / "results_in.csv", chosen)
        for path in ood_files:
            ood_name = path.stem[len("results_"):]
            ood_scores = scores_of(path, chosen)
            value = auroc(in_scores, ood_scores)
            rows.append({"ood_set": ood_name, "score": score_name, "auroc": value,
                         "n_in": len(in_scores), "n_ood": len(ood_scores)})
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
