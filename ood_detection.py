"""Score images as OOD from their reconstruction errors and report AUROC.

    python ood_detection.py --output_dir=${output_root} --model_name=fashionmnist

Reads OUTPUT_DIR/MODEL_NAME/ood/results_val.csv (z-score statistics), results_in.csv (the
in-distribution test set) and every other results_<Name>.csv (one OOD set each), and the
other detectors' ood/<detector>/results_<set>.csv (reconstruct.py --detectors), whose
density fits see only the validation (or --fit_on=fit) images. Higher score = more OOD; OOD
is the positive class. Prints the paper's AUC line per set and score, then a table of every
detector x OOD set (AUROC and UNet evaluations per image), then AUROC, AUPR-In, AUPR-Out and
FPR@95%TPR with bootstrap intervals; writes ood/summary_auroc.csv (one row per OOD set,
detector and score) and ood/scores_<set>.csv (one row per image of each set: its scores and
per-t z-scores).

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

from src.cli import (PLAIN_NAME, RESERVED_SETS, device_name, non_negative_int, plain_name, positive_int, run_main,
                     unit_fraction)
from src.detectors import FEATURE_DETECTORS

logger = logging.getLogger("ddpm_ood")


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
    parser.add_argument("--fit_on", choices=("val", "fit"), default="val",
                        help="In-distribution images the density fits of the path/msma/denoise detectors see: val "
                             "(default, the validation split, as the paper's z-scores) or fit (reconstruct.py "
                             "--fit_ids). Never test or OOD images.")
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
    paths += sorted(p for p in ood_dir.glob("results_*.csv") if p.stem[len("results_"):] not in RESERVED_SETS)
    frames = {}
    for path in paths:
        name = path.stem[len("results_"):]
        settings = reference if path == reference_path else read_settings(path)
        if settings is None:
            if name in RESERVED_SETS:
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
    ood = {name: frame for name, frame in frames.items() if name not in RESERVED_SETS}
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
    import pandas as pd

    from src.files import save_csv_atomic
    from src.scoring import ScoringError

    ood_dir = args.output_dir / args.model_name / "ood"
    features_found = [d for d in FEATURE_DETECTORS if (ood_dir / d / f"results_{args.fit_on}.csv").exists()]
    if not (ood_dir / "results_val.csv").exists() and not features_found:
        raise ScoringError(f"{ood_dir / 'results_val.csv'} does not exist. Run reconstruct.py with --run_val=1 "
                           "--run_in=1 first.")
    if args.fit_on != "val" and not features_found:
        raise ScoringError(f"--fit_on={args.fit_on}: no detector results_{args.fit_on}.csv in {ood_dir}/<detector>/; "
                           "run reconstruct.py with --fit_ids and --detectors path,msma,denoise first.")
    # Every check passes before anything is printed.
    recon = check_recon(args, ood_dir) if (ood_dir / "results_val.csv").exists() else None
    ood_sets = list(recon["ood"]) if recon else sorted(
        {p.stem[len("results_"):] for d in features_found for p in (ood_dir / d).glob("results_*.csv")}
        - set(RESERVED_SETS))
    features = {name: check_features(ood_dir, name, ood_sets, args.fit_on, recon) for name in features_found}
    if recon is None and not any(set(ood_sets) & set(f["frames"]) for f in features.values()):
        raise ScoringError(f"No OOD results (results_<Name>.csv) in {ood_dir}. Run reconstruct.py with --run_out=1.")

    rows, tables, main_scores = [], {}, {}
    costs = {"recon": recon["nfe"]} if recon else {}
    if recon is not None:
        rows += score_recon(args, recon, tables, main_scores)
    for name, found in features.items():
        rows += score_features(args, found, tables, main_scores)
        costs[name] = found["nfe"]
    rows += score_combinations(args, main_scores, ood_sets, tables, costs)
    summary = pd.DataFrame(rows)
    print(detector_table(summary, ood_sets))
    print(metrics_table(summary, args.bootstrap))
    for name, table in tables.items():
        save_csv_atomic(ood_dir / f"scores_{name}.csv", table)
    if recon is not None:
        write_recon_extras(args, recon, tables, summary, ood_dir)
    save_csv_atomic(ood_dir / "summary_auroc.csv", summary)
    logger.info("wrote %s and scores_<set>.csv for %s", ood_dir / "summary_auroc.csv", ", ".join(tables))
    return summary


def check_recon(args, ood_dir: Path) -> dict:
    """Read and check the reconstruction results (the paper's detector) and fit its per-t statistics."""
    from src.scoring import ScoringError, available_metrics, fit_validation_stats, read_settings, select_t

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

    sets = {"in": check_t(in_frame, ood_dir / "results_in.csv")}
    sets.update({name: check_t(frame, ood_dir / f"results_{name}.csv") for name, frame in ood_frames.items()})
    sets["val"] = val
    settings = read_settings(ood_dir / "results_val.csv")
    # The cost of the start points kept: reconstruct.py records each start's (grid index + 2).
    per_start = settings.get("nfe_per_start") or {}
    nfe = sum(per_start[str(int(t))] for t in kept_t) if all(str(int(t)) in per_start for t in kept_t) else None
    return {"sets": sets, "ood": ood_frames, "stats": stats, "metrics": metrics, "settings": settings, "nfe": nfe}


def score_recon(args, recon: dict, tables: dict, main_scores: dict) -> list[dict]:
    """The paper's scores: print the seed's AUC lines and return one summary row per (score, OOD set)."""
    from src.detectors.recon import SCORES, available_scores, default_score
    from src.scoring import score_frame

    sets, stats, metrics = recon["sets"], recon["stats"], recon["metrics"]
    paper = default_score(metrics)
    rows, per_image = [], {name: {} for name in sets}
    for score_name in available_scores(metrics):
        scores = {name: score_frame(frame, stats, SCORES[score_name], source=name) for name, frame in sets.items()}
        for name, series in scores.items():
            per_image[name]["score" if score_name == paper else f"score_{score_name}"] = series
        if score_name == paper:
            main_scores["recon"] = scores
        for ood_name in recon["ood"]:
            rows.append(summary_row(args, ood_name, "recon", score_name, recon["nfe"], scores["in"].to_numpy(),
                                    scores[ood_name].to_numpy()))
            suffix = "" if score_name == paper else f" ({score_name})"
            print(f"AUC for {args.model_name} vs {ood_name}{suffix}: {100 * rows[-1]['auroc']:.1f}")
    for name, frame in sets.items():
        tables[name] = per_image_scores(frame, per_image[name], stats, metrics)
    return rows


def check_features(ood_dir: Path, name: str, ood_sets: list[str], fit_on: str, recon: dict | None) -> dict:
    """Read and check one feature detector's results for the fit set, in and every OOD set."""
    from src.detectors import feature_detector_class
    from src.detectors.results import load_detector_sets
    from src.scoring import ScoringError, read_settings

    folder = ood_dir / name
    settings = read_settings(folder / f"results_{fit_on}.csv")
    if settings is None:
        raise ScoringError(f"{folder / f'results_{fit_on}.csv'} has no settings manifest; re-run reconstruct.py "
                           "with --restart for that set.")
    detector = feature_detector_class(name).from_settings(settings)
    wanted = list(dict.fromkeys([fit_on, "val", "in", *ood_sets]))
    frames = load_detector_sets(folder, wanted, detector.columns(),
                                recon["settings"] if recon else None)
    if "in" not in frames:
        raise ScoringError(f"{folder / 'results_in.csv'} does not exist: run reconstruct.py --run_in=1 with "
                           f"--detectors {name}.")
    return {"detector": detector, "frames": frames, "fit_on": fit_on,
            "nfe": settings.get("nfe_per_image", detector.nfe())}


def score_features(args, found: dict, tables: dict, main_scores: dict) -> list[dict]:
    """Fit a feature detector on the fit set alone, score every set, one summary row per (score, OOD set)."""
    import numpy as np

    detector, frames = found["detector"], found["frames"]
    columns = detector.columns()
    fitted = detector.fit(frames[found["fit_on"]][columns].to_numpy(), seed=args.bootstrap_seed)
    scored = {name: detector.score(fitted, frame[columns].to_numpy()) for name, frame in frames.items()}
    main_scores[detector.name] = {name: _series(frames[name], values[detector.primary])
                                  for name, values in scored.items()}
    for name, values in scored.items():
        for score_name, array in values.items():
            add_column(tables, name, frames[name], f"score_{score_name}", array)
    rows = []
    for score_name in detector.score_names:
        for ood_name in sorted(set(frames) - set(RESERVED_SETS)):
            rows.append(summary_row(args, ood_name, detector.name, score_name, found["nfe"],
                                    np.asarray(scored["in"][score_name]), np.asarray(scored[ood_name][score_name])))
    return rows


def score_combinations(args, main_scores: dict, ood_sets: list[str], tables: dict, costs: dict) -> list[dict]:
    """combo (every detector's main score) and combo-cheap (all but recon), z-scored on the validation images."""
    from src.detectors.combined import combine

    rows = []
    combos = {"combo": list(main_scores), "combo-cheap": [d for d in main_scores if d != "recon"]}
    for combo, members in combos.items():
        if len(members) < 2 or (combo == "combo-cheap" and members == list(main_scores)):
            continue
        sets = [s for s in ["val", "in", *ood_sets] if all(s in main_scores[d] for d in members)]
        aligned = {}
        for name in sets:
            series = [main_scores[d][name] for d in members]
            if any(not s.index.equals(series[0].index) for s in series):
                logger.warning("%s: the detectors scored different images of %s; leaving it out.", combo, name)
                continue
            aligned[name] = {d: s.to_numpy() for d, s in zip(members, series)}
        if not {"val", "in"} <= set(aligned):
            continue
        nfe = None if any(costs.get(d) is None for d in members) else sum(costs[d] for d in members)
        combined = {name: combine(aligned["val"], values) for name, values in aligned.items()}
        for name, values in combined.items():
            index = main_scores[members[0]][name].index
            add_column(tables, name, None, f"score_{combo}", values, index)
        for ood_name in (s for s in ood_sets if s in combined):
            rows.append(summary_row(args, ood_name, "combo", combo, nfe, combined["in"], combined[ood_name]))
    return rows
def summary_row(args, ood_name: str, detector: str, score: str, nfe, in_scores, ood_scores) -> dict:
    """One row of summary_auroc.csv: the OOD metrics (and their bootstrap intervals) of one score."""
    from src.scoring import bootstrap_intervals, ood_metrics

    row = {"ood_set": ood_name, "detector": detector, "score": score, **ood_metrics(in_scores, ood_scores),
           "n_in": len(in_scores), "n_ood": len(ood_scores), "nfe_per_image": nfe}
    if args.bootstrap:
        for metric, (low, high) in bootstrap_intervals(in_scores, ood_scores, args.bootstrap,
                                                       args.bootstrap_seed).items():
            row[f"{metric}_low"], row[f"{metric}_high"] = low, high
    return row


def _series(frame, values):
    """Per-image values indexed by image_index (how the sets' scores are matched up)."""
    import pandas as pd

    return pd.Series(values, index=pd.Index(frame["image_index"].to_numpy(), name="image_index"))


def add_column(tables: dict, set_name: str, frame, column: str, values, index=None) -> None:
    """Add one per-image score to ``scores_<set>.csv``'s table, matched by image_index (a new table
    with filename and image_index when the set has none yet)."""
    import pandas as pd

    index = frame["image_index"].to_numpy() if index is None else index
    if set_name not in tables:
        if frame is None:
            return
        tables[set_name] = pd.DataFrame({"filename": frame["filename"].to_numpy(), "image_index": index})
    table = tables[set_name]
    if "image_index" not in table:
        logger.warning("scores_%s.csv: its images have no image_index; %s left out.", set_name, column)
        return
    by_index = pd.Series(values, index=index)
    if not set(table["image_index"]) <= set(by_index.index):
        logger.warning("scores_%s.csv: %s was measured on other images of %s; left out.", set_name, column, set_name)
        return
    table[column] = by_index.loc[table["image_index"].to_numpy()].to_numpy()


def write_recon_extras(args, recon: dict, tables: dict, summary, ood_dir: Path) -> None:
    """For the paper's score: the threshold for new images, AUROC per start point, figures, TensorBoard."""
    import json

    import pandas as pd

    from src.detector import THRESHOLD_FILE, fit_threshold
    from src.detectors.recon import SCORES, default_score
    from src.files import save_csv_atomic, write_text_atomic

    paper = default_score(recon["metrics"])
    ood_sets = list(recon["ood"])
    threshold = {"score": paper, "metrics": SCORES[paper], "tpr": args.tpr,
                 "threshold": fit_threshold(tables["val"]["score"].to_numpy(), args.tpr), "max_t": args.max_t,
                 "t_skip": args.t_skip, "settings": recon["settings"]}
    write_text_atomic(ood_dir / THRESHOLD_FILE, json.dumps(threshold, indent=1))
    per_t = auroc_per_t(tables, ood_sets, SCORES[paper])
    save_csv_atomic(ood_dir / "auroc_per_t.csv", pd.DataFrame(
        [{"ood_set": name, "t": t, "auroc": value} for name, values in per_t.items() for t, value in values.items()]))
    if args.figures:
        import numpy as np

        from src.figures import auroc_per_t_figure, examples_figure, histogram_figure, roc_figure

        figures = ood_dir / "figures"
        in_scores = tables["in"]["score"].to_numpy()
        ood_scores = {name: tables[name]["score"].to_numpy() for name in ood_sets}
        label = f"{args.model_name}: {paper} score"
        roc_figure(in_scores, ood_scores, figures / "roc.png", f"ROC, {label}")
        histogram_figure(in_scores, ood_scores, figures / "histograms.png", f"Scores, {label}")
        auroc_per_t_figure(per_t, figures / "auroc_per_t.png", f"AUROC per start point, {label}")
        for name in recon["sets"]:  # the reconstruction grids of the sets reconstruct.py kept examples of
            if (ood_dir / f"examples_{name}.npz").exists():
                with np.load(ood_dir / f"examples_{name}.npz") as examples:
                    examples_figure(dict(examples), figures / f"examples_{name}.png",
                                    f"{name}: input, then its reconstruction from each start point")
        logger.info("figures in %s", figures)
    log_to_tensorboard(args.output_dir / args.model_name / "tensorboard" / "ood_detection", summary, tables, ood_sets)


def detector_table(summary, ood_sets: list[str]) -> str:
    """Every detector and score against every OOD set: AUROC (%) and UNet evaluations per image."""
    header = ["detector", "score", "NFE/img", *ood_sets]
    lines = []
    for (detector, score), group in summary.groupby(["detector", "score"], sort=False):
        auroc = dict(zip(group["ood_set"], group["auroc"]))
        nfe = group["nfe_per_image"].iloc[0]
        lines.append([detector, score, "?" if nfe is None or nfe != nfe else str(int(nfe)),
                      *(f"{100 * auroc[name]:.1f}" if name in auroc else "-" for name in ood_sets)])
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join(["AUROC (%) of every detector, OOD positive:", render(header), *map(render, lines)])


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
    header = ["OOD set", "detector", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95%TPR"]
    lines = []
    for row in summary.to_dict("records"):
        cells = [row["ood_set"], row["detector"], row["score"]]
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


if __name__ == "__main__":
    run_main(main, parse_args)
