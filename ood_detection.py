"""Score images as OOD from their reconstruction errors and report AUROC.

    python ood_detection.py --output_dir=${output_root} --model_name=fashionmnist

Reads OUTPUT_DIR/MODEL_NAME/ood/results_val.csv (z-score statistics), results_in.csv (the
in-distribution test set) and every other results_<Name>.csv (one OOD set each). Higher score
= more OOD; OOD is the positive class. Prints one line per set and score, then a table of
AUROC, AUPR-In, AUPR-Out and FPR@95%TPR with bootstrap intervals, and writes
ood/summary_auroc.csv (one row per OOD set and score) and ood/scores_<set>.csv (one row per
image of val, in and every OOD set: its scores and per-t z-scores).

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

from src.cli import PLAIN_NAME, device_name, non_negative_int, plain_name, positive_int, run_main, unit_fraction

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
    parser.add_argument("--bootstrap", type=non_negative_int, default=200,
                        help="Resamples for the 95%% bootstrap interval of every metric; 0: no intervals. Default 200.")
    parser.add_argument("--bootstrap_seed", type=non_negative_int, default=0, help="Seed of the resampling. Default 0.")
    parser.add_argument("--tpr", type=unit_fraction, default=0.95,
                        help="In-distribution TPR of the saved threshold: the score below which this share of the "
                             "validation images fall (ood/threshold.json). Default 0.95.")
    parser.add_argument("--score_ids", default=None, metavar="CSV_OR_FOLDER",
                        help="Score new images (a split CSV or a folder of image files) with this run's model, "
                             "reconstruction settings and saved threshold; writes ood/predictions_<name>.csv "
                             "(filename, score, is_ood). Run ood_detection.py without it first.")
    parser.add_argument("--device", type=device_name, default="auto", help="For --score_ids: auto, cpu, cuda, ...")
    parser.add_argument("--lpips_weights", type=Path, default=None,
                        help="For --score_ids: torchvision AlexNet weights file; default: the torch hub cache.")
    parser.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                        help="Write ood/figures/*.png (ROC curves, score histograms, AUROC per start point); "
                             "--no-figures (or --no_figures) skips them. Default on.")
    parser.add_argument("--no_figures", dest="figures", action="store_false", help=argparse.SUPPRESS)
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


def score_new_images(args: argparse.Namespace):
    """--score_ids: reconstruct and score new images with the run's settings and saved threshold."""
    import pandas as pd

    from src.data import load_split, resolve_split
    from src.detector import OODDetector
    from src.errors import DataError
    from src.files import save_csv_atomic

    run_dir = args.output_dir / args.model_name
    name = resolve_split(args.score_ids).name
    if not PLAIN_NAME.fullmatch(name):
        raise DataError(f"--score_ids {args.score_ids}: its name {name!r} is not a plain name; rename it.")
    detector = OODDetector.load(run_dir, args.device, args.lpips_weights)
    images = load_split(args.score_ids, bool(detector.settings["is_grayscale"]))
    scores = detector.score(images.images, images.filenames)  # checks the size before any work
    predictions = pd.DataFrame({"filename": images.filenames, "score": scores,
                                "is_ood": scores > detector.threshold})
    path = run_dir / "ood" / f"predictions_{name}.csv"
    save_csv_atomic(path, predictions)
    print(f"{int(predictions['is_ood'].sum())} of {len(predictions)} images flagged as OOD (score above "
          f"{detector.threshold:.4g}, the threshold at {100 * detector.saved['tpr']:.0f}% in-distribution TPR); "
          f"wrote {path}")
    return predictions


def main(args: argparse.Namespace):
    if args.score_ids:
        return score_new_images(args)
    import json

    import pandas as pd

    from src.files import save_csv_atomic
    from src.scoring import (ScoringError, available_metrics, bootstrap_intervals, fit_validation_stats, ood_metrics,
                             score_frame, select_t)

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

    sets["val"] = val
    rows, per_image = [], {name: {} for name in sets}
    for score_name, chosen in SCORES.items():
        if not set(chosen) <= set(metrics):
            continue
        scores = {name: score_frame(frame, stats, chosen, source=name) for name, frame in sets.items()}
        for name, series in scores.items():
            per_image[name]["score" if score_name == default_score(metrics) else f"score_{score_name}"] = series
        for ood_name in ood_frames:
            in_scores, ood_scores = scores["in"].to_numpy(), scores[ood_name].to_numpy()
            row = {"ood_set": ood_name, "score": score_name, **ood_metrics(in_scores, ood_scores),
                   "n_in": len(in_scores), "n_ood": len(ood_scores)}
            if args.bootstrap:
                for metric, (low, high) in bootstrap_intervals(in_scores, ood_scores, args.bootstrap,
                                                               args.bootstrap_seed).items():
                    row[f"{metric}_low"], row[f"{metric}_high"] = low, high
            rows.append(row)
            suffix = "" if score_name == default_score(metrics) else f" ({score_name})"
            print(f"AUC for {args.model_name} vs {ood_name}{suffix}: {100 * row['auroc']:.1f}")
    summary = pd.DataFrame(rows)
    print(metrics_table(summary, args.bootstrap))
    tables = {name: per_image_scores(frame, per_image[name], stats, metrics) for name, frame in sets.items()}
    for name, table in tables.items():
        save_csv_atomic(ood_dir / f"scores_{name}.csv", table)
    from src.detector import THRESHOLD_FILE, fit_threshold
    from src.files import write_text_atomic
    from src.scoring import read_settings

    threshold = {"score": default_score(metrics), "metrics": SCORES[default_score(metrics)], "tpr": args.tpr,
                 "threshold": fit_threshold(tables["val"]["score"].to_numpy(), args.tpr), "max_t": args.max_t,
                 "t_skip": args.t_skip, "settings": read_settings(ood_dir / "results_val.csv")}
    write_text_atomic(ood_dir / THRESHOLD_FILE, json.dumps(threshold, indent=1))
    per_t = auroc_per_t(tables, list(ood_frames), SCORES[default_score(metrics)])
    save_csv_atomic(ood_dir / "auroc_per_t.csv", pd.DataFrame(
        [{"ood_set": name, "t": t, "auroc": value} for name, values in per_t.items() for t, value in values.items()]))
    if args.figures:
        import numpy as np

        from src.figures import auroc_per_t_figure, examples_figure, histogram_figure, roc_figure

        figures = ood_dir / "figures"
        in_scores = tables["in"]["score"].to_numpy()
        ood_scores = {name: tables[name]["score"].to_numpy() for name in ood_frames}
        label = f"{args.model_name}: {default_score(metrics)} score"
        roc_figure(in_scores, ood_scores, figures / "roc.png", f"ROC, {label}")
        histogram_figure(in_scores, ood_scores, figures / "histograms.png", f"Scores, {label}")
        auroc_per_t_figure(per_t, figures / "auroc_per_t.png", f"AUROC per start point, {label}")
        for name in sets:  # the reconstruction grids of the sets reconstruct.py kept examples of
            if (ood_dir / f"examples_{name}.npz").exists():
                with np.load(ood_dir / f"examples_{name}.npz") as examples:
                    examples_figure(dict(examples), figures / f"examples_{name}.png",
                                    f"{name}: input, then its reconstruction from each start point")
        logger.info("figures in %s", figures)
    log_to_tensorboard(args.output_dir / args.model_name / "tensorboard" / "ood_detection", summary, tables,
                       list(ood_frames))
    save_csv_atomic(ood_dir / "summary_auroc.csv", summary)
    logger.info("wrote %s and scores_<set>.csv for %s", ood_dir / "summary_auroc.csv", ", ".join(sets))
    return summary


def log_to_tensorboard(log_dir: Path, summary, tables: dict, ood_sets: list[str]) -> None:
    """Metrics, score histograms and precision-recall curves beside the training logs, so that
    ``tensorboard --logdir=${output_root}`` shows the whole run."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for row in summary.to_dict("records"):
            for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
                writer.add_scalar(f"{row['ood_set']}/{row['score']}/{metric}", row[metric], 0)
        for name in ["in", *ood_sets]:
            writer.add_histogram(f"scores/{name}", tables[name]["score"].to_numpy(), 0)
        for name in ood_sets:
            scores = np.r_[tables["in"]["score"].to_numpy(), tables[name]["score"].to_numpy()]
            labels = np.r_[np.zeros(len(tables["in"])), np.ones(len(tables[name]))]
            # add_pr_curve wants probabilities: a monotone map to [0, 1] keeps the curve.
            spread = np.ptp(scores) or 1.0
            writer.add_pr_curve(f"pr/{name} (OOD positive)", labels, (scores - scores.min()) / spread, 0)


def per_image_scores(frame, scores: dict, stats, metrics: list[str]):
    """One row per image: filename, image_index, its scores and every per-t z-score."""
    import pandas as pd

    from src.scoring import image_key, z_table

    key = image_key(frame)
    first = frame.drop_duplicates(key).set_index(key)
    table = pd.DataFrame({"filename": first["filename"]})
    if key == "image_index":
        table.insert(1, "image_index", first.index)
    for name, series in scores.items():
        table[name] = series
    return pd.concat([table, z_table(frame, stats, metrics)], axis=1).reset_index(drop=True)


def auroc_per_t(tables: dict, ood_sets: list[str], chosen: list[str]) -> dict[str, dict[int, float]]:
    """AUROC of each OOD set from one start point t alone: per image, the sum of the chosen
    metrics' z-scores at that t (the paper's score restricted to t)."""
    from src.scoring import auroc

    ts = sorted({int(c.rsplit("_t", 1)[1]) for c in tables["in"].columns if c.startswith("z_")})
    at = lambda table, t: sum(table[f"z_{metric}_t{t}"] for metric in chosen).to_numpy()
    return {name: {t: auroc(at(tables["in"], t), at(tables[name], t)) for t in ts} for name in ood_sets}


def metrics_table(summary, bootstrap: int) -> str:
    """The metrics of every OOD set and score as an aligned table (percentages)."""
    header = ["OOD set", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95%TPR"]
    lines = []
    for row in summary.to_dict("records"):
        cells = [row["ood_set"], row["score"]]
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            cell = f"{100 * row[metric]:.1f}"
            if bootstrap:
                cell += f" [{100 * row[f'{metric}_low']:.1f}, {100 * row[f'{metric}_high']:.1f}]"
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    note = (f"95% bootstrap intervals from {bootstrap} resamples; " if bootstrap else "") + \
        "OOD is the positive class, except for AUPR-In and the TPR of FPR@95%TPR (in-distribution positive)."
    return "\n".join([render(header), *map(render, lines), note])


def default_score(metrics: list[str]) -> str:
    """The paper's score: MSE + LPIPS z-scores, or MSE alone for an MSE-only run."""
    return "mse+lpips" if "lpips" in metrics else "mse"


if __name__ == "__main__":
    run_main(main, parse_args)
