"""Score images as OOD from every detector's results and report AUROC.

    python ood_detection.py --output_dir=${output_root} --model_name=fashionmnist

Reads OUTPUT_DIR/MODEL_NAME/ood/: the paper's results_val.csv (z-score statistics),
results_in.csv (the in-distribution test set) and every other results_<Name>.csv (one OOD set
each), and each other detector's ood/<detector>/results_<set>.csv (reconstruct.py --detectors),
whose fits see only the validation (or --fit_on=fit) images. Higher score = more OOD; OOD is
the positive class. Prints the paper's AUC line per set and score, then a table of every
detector x OOD set (AUROC and UNet evaluations per image), then AUROC, AUPR-In, AUPR-Out and
FPR@95%TPR with bootstrap intervals; writes ood/summary_auroc.csv (one row per OOD set,
detector and score) and ood/scores_<set>.csv (one row per image of each set: its scores and
per-t z-scores).

Every results file is checked before anything is printed: all must come from one model with
one set of settings (their settings manifests, results_<Name>.settings.json), and hold one
finite value per image (and start point). A results_<Name>.csv without a manifest was not
written by reconstruct.py: it is skipped with a warning.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from ddpm_ood.cli import add_knobs, device_name, flags_given, non_negative_int, plain_name, run_main, unit_fraction
from ddpm_ood.detectors import detector_help, score_knobs

logger = logging.getLogger("ddpm_ood")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, type=Path, help="Root folder for all runs.")
    parser.add_argument("--model_name", required=True, type=plain_name,
                        help="Run name (a plain name); reads OUTPUT_DIR/MODEL_NAME/ood/results_*.csv.")
    parser.add_argument("--bootstrap", type=non_negative_int, default=200,
                        help="Resamples for the 95%% bootstrap interval of every metric; 0: no intervals. Default 200.")
    parser.add_argument("--bootstrap_seed", type=non_negative_int, default=0,
                        help="Seed of the resampling (and of the density fits). Default 0.")
    parser.add_argument("--tpr", type=unit_fraction, default=0.95,
                        help="In-distribution TPR of the saved threshold: the score below which this share of the "
                             "validation images fall (saved in ood/fits/<detector>.json). Default 0.95.")
    parser.add_argument("--score_ids", default=None, metavar="CSV_OR_FOLDER",
                        help="Score new images (a split CSV or a folder of image files) with this run's model, "
                             "settings and saved threshold; writes ood/predictions_<name>.csv (filename, score, "
                             "is_ood, input_check). Run ood_detection.py without it first.")
    parser.add_argument("--detector", default=None, metavar="NAME",
                        help=f"For --score_ids: the detector ({detector_help(combinations=True)}; its main score) or "
                             "one of their scores (docs/detectors.md) to score with; writes "
                             "ood/predictions_<name>_<NAME>.csv. Default: the paper's score.")
    parser.add_argument("--score_maps", action="store_true",
                        help="For --score_ids: each image's anomaly map too (z-scored on the validation images' maps "
                             "that reconstruct.py --save_maps kept), beside the predictions: <predictions>_maps.npz "
                             "and, for NIfTI scans, each on its own grid in <predictions>_maps/ "
                             "(docs/latent_and_3d.md).")
    parser.add_argument("--device", type=device_name, default="auto", help="For --score_ids: auto, cpu, cuda, ...")
    parser.add_argument("--predictions", default=None, metavar="CSV",
                        help="For --score_ids: where to write the predictions (default: the run's "
                             "ood/predictions_<name>.csv; an earlier file is replaced, with a warning).")
    parser.add_argument("--pretrained", default=None, metavar="PATH_OR_ID",
                        help="For --score_ids: where the run's pretrained model is now, if its folder moved (its "
                             "identity must be the one its results record). Default: where the results say.")
    parser.add_argument("--fit_on", choices=("val", "fit"), default="val",
                        help="In-distribution images the fits of the detectors other than the paper's see: val "
                             "(default, the validation split, as the paper's z-scores) or fit (reconstruct.py "
                             "--fit_ids). Never test or OOD images.")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="Write ood/figures/*.png (ROC curves, score histograms, AUROC per start point); "
                             "--no-figures (or --no_figures) skips them. Default on.")
    parser.add_argument("--no_figures", dest="figures", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="Log debug messages.")
    group = parser.add_argument_group(f"detector settings (detectors: {detector_help()})")
    add_knobs(group, score_knobs())
    return parser.parse_args(argv)


def main(args: argparse.Namespace):
    import os

    from ddpm_ood.utils.errors import ConfigError
    from ddpm_ood.runs.layout import RunFiles

    if "LOCAL_RANK" in os.environ and int(os.environ.get("RANK", "0")):
        return None  # under torchrun: it takes seconds, on rank 0 alone (one output, one set of files)
    run = RunFiles(args.output_dir / args.model_name)
    if args.score_maps and not args.score_ids:
        raise ConfigError("--score_maps draws the maps of the images --score_ids scores: pass --score_ids too (the "
                          "sets reconstruct.py measured get theirs from --save_maps).")
    if args.score_ids:
        from ddpm_ood.api import score_files

        fitting = flags_given(args, parse_args, ("max_start_t", "min_start_t", "t_skip", "fit_on", "tpr",
                                                 "bootstrap_seed"))
        if fitting:
            raise ConfigError(f"--score_ids scores with the fits ood_detection.py saved (ood/fits/), which record "
                              f"{', '.join('--' + f for f in fitting)}: re-run ood_detection.py with them first, then "
                              "--score_ids without them.")

        predictions, path, scorer = score_files(run.dir, args.score_ids, args.device, args.lpips_weights, args.detector,
                                                 args.pretrained, args.predictions, args.score_maps)
        print(f"{int(predictions['is_ood'].sum())} of {len(predictions)} images flagged as OOD by {scorer.score_name} "
              f"(score above {scorer.threshold:.4g}, the threshold at {100 * scorer.tpr:.0f}% in-distribution TPR); "
              f"wrote {path}")
        return predictions
    from ddpm_ood.evaluation.scores import Options, evaluate
    from ddpm_ood.evaluation.report import print_report, write_report

    options = Options(max_start_t=args.max_start_t, min_start_t=args.min_start_t, t_skip=args.t_skip,
                      fit_on=args.fit_on, bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed, tpr=args.tpr)
    evaluation = evaluate(run, options)  # every check passes before anything is printed
    print_report(evaluation)
    write_report(evaluation, figures=args.figures)
    return evaluation.summary()


if __name__ == "__main__":
    run_main(main, parse_args)
