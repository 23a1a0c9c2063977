"""An :class:`~ddpm_ood.evaluation.scores.Evaluation` as people and programs read it: the printed lines and
tables, the CSV files, the fit files, the figures and TensorBoard.

Printed: the seed's ``AUC for <model> vs <set>: NN.N`` lines first (the paper's detector), then
one table of every detector and score against every OOD set, then every metric with its
bootstrap interval. Written (``ddpm_ood.runs.layout.RunFiles`` names the paths): ``summary_auroc.csv``,
``scores_<set>.csv`` (per image: every score, and the paper's per-t z-scores), ``fits/<detector>.json``
(each detector's fit and thresholds, plain JSON), and for the paper's detector ``auroc_per_t.csv``,
``figures/*.png`` and TensorBoard.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd

from ddpm_ood.evaluation.scores import DetectorResult, Evaluation
from ddpm_ood.detectors.fits import write_fit
from ddpm_ood.utils.files import save_csv_atomic
from ddpm_ood.runs.results import image_key
from ddpm_ood.metrics.scoring import METRIC_NAMES

logger = logging.getLogger("ddpm_ood")


def print_report(evaluation: Evaluation) -> None:
    summary = evaluation.summary()
    for line in auc_lines(evaluation):
        print(line)
    print(detector_table(summary, evaluation.ood_sets))
    if members_line(evaluation):
        print(members_line(evaluation))
    print(metrics_table(summary, evaluation.options.bootstrap))


def write_report(evaluation: Evaluation, figures: bool = True) -> None:
    run = evaluation.run
    tables = score_tables(evaluation)
    for name, table in tables.items():
        save_csv_atomic(run.scores(name), table)
    for result in evaluation.results:  # each detector's fit and thresholds, for new images
        write_fit(run, result.fit)
    if evaluation.headline is not None:
        save_csv_atomic(run.auroc_per_t, pd.DataFrame([{"ood_set": name, "t": t, "auroc": value}
                                                       for name, values in evaluation.per_t.items()
                                                       for t, value in values.items()]))
        if figures:
            write_figures(evaluation)
        log_to_tensorboard(evaluation)
    if figures:  # every detector's maps, the paper's among them or not (a partial-only run has its own)
        write_maps(run, ["in", *evaluation.ood_sets])
        logger.info("figures in %s", run.figures)
    save_csv_atomic(run.summary, evaluation.summary())
    logger.info("wrote %s and scores_<set>.csv for %s", run.summary, ", ".join(tables))


def auc_lines(evaluation: Evaluation) -> list[str]:
    """The seed's lines: the paper's score first, then its other scores, each against every OOD set."""
    headline = evaluation.headline
    if headline is None:
        return []
    return [f"AUC for {evaluation.run.name} vs {row.ood_set}{'' if row.score == headline.main else f' ({row.score})'}: "
            f"{100 * row.metrics['auroc']:.1f}" for row in evaluation.rows if row.detector == headline.name]


def _render(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [render(header), *map(render, lines)]


def detector_table(summary: pd.DataFrame, ood_sets: list[str]) -> str:
    """Every detector and score against every OOD set: AUROC (%) and UNet evaluations per image."""
    lines = []
    for (detector, score), group in summary.groupby(["detector", "score"], sort=False):
        auroc = dict(zip(group["ood_set"], group["auroc"]))
        nfe = group["nfe_per_image"].iloc[0]
        lines.append([detector, score, "?" if nfe is None or nfe != nfe else str(int(nfe)),
                      *(f"{100 * auroc[name]:.1f}" if name in auroc else "-" for name in ood_sets)])
    return "\n".join(["AUROC (%) of every detector, OOD positive:",
                      *_render(["detector", "score", "NFE/img", *ood_sets], lines)])


def members_line(evaluation: Evaluation) -> str | None:
    """Which detectors each combination sums (they change with the detectors that have results)."""
    parts = [f"{score} = {' + '.join(members)}" for result in evaluation.results
             for score, members in result.members.items()]
    return "; ".join(parts) or None


def metrics_table(summary: pd.DataFrame, bootstrap: int) -> str:
    """The metrics of every OOD set and score as an aligned table (percentages)."""
    lines = []
    for row in summary.to_dict("records"):
        cells = [row["ood_set"], row["detector"], row["score"]]
        for metric in METRIC_NAMES:
            cell = f"{100 * row[metric]:.1f}"
            if bootstrap:
                cell += f" [{100 * row[f'{metric}_low']:.1f}, {100 * row[f'{metric}_high']:.1f}]"
            cells.append(cell)
        lines.append(cells)
    note = (f"95% bootstrap intervals from {bootstrap} resamples; " if bootstrap else "") + \
        "OOD is the positive class, except for AUPR-In and FPR@95%TPR-In (in-distribution positive: the OOD share " \
        "accepted when 95% of in-distribution images are, ODIN's); FPR95TPR is pytorch-ood's and OpenOOD's (the " \
        "in-distribution share flagged when 95% of OOD images are)."
    header = ["OOD set", "detector", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95%TPR-In", "FPR95TPR"]
    return "\n".join([*_render(header, lines), note])


# --- scores_<set>.csv ---------------------------------------------------------------------------

def score_column(result: DetectorResult, score: str, headline: DetectorResult | None) -> str:
    """``score`` is the paper's main score; every other score is ``score_<name>``."""
    return "score" if result is headline and score == result.main else f"score_{score}"


def score_tables(evaluation: Evaluation) -> dict[str, pd.DataFrame]:
    """Per set, one row per image: filename, image_index, every score, and the paper's per-t z-scores.

    The paper's detector's images make a set's rows; another detector's scores join them by
    image_index (one that measured other images of the set is left out, with a warning).
    """
    headline, tables = evaluation.headline, {}
    if headline is not None:
        for name, images in headline.images.items():
            key = image_key(images)
            table = images.set_index(images[key].to_numpy())[["filename"]]
            if key == "image_index":
                table.insert(1, "image_index", table.index)
            for score in headline.scores:
                table[score_column(headline, score, headline)] = headline.scores[score][name]
            tables[name] = pd.concat([table, wide_details(headline.details[name])], axis=1).reset_index(drop=True)
    for result in evaluation.results:
        if result is headline:
            continue
        for name in dict.fromkeys(s for by_set in result.scores.values() for s in by_set):
            for score, by_set in result.scores.items():
                if name in by_set:
                    add_column(tables, name, result.images.get(name), score_column(result, score, headline), by_set[name])
    return tables


def wide_details(details: pd.DataFrame) -> pd.DataFrame:
    """A long table (image, t, metric, z) as columns ``z_<metric>_t<t>``, one row per image, in order."""
    key = image_key(details)
    columns = {}
    for metric, part in details.groupby("metric", sort=False):
        wide = part.pivot(index=key, columns="t", values="z")
        for t in wide.columns:
            columns[f"z_{metric}_t{int(t)}"] = wide[t]
    return pd.DataFrame(columns).loc[pd.unique(details[key])]


def add_column(tables: dict, set_name: str, images: pd.DataFrame | None, column: str, values: pd.Series) -> None:
    """Add one per-image score to ``scores_<set>.csv``'s table, matched by image_index (a new table of
    ``images`` when the set has none yet; none for a combination)."""
    if set_name not in tables:
        if images is None:
            return
        tables[set_name] = pd.DataFrame({"filename": images["filename"].to_numpy(), "image_index": values.index.to_numpy()})
    table = tables[set_name]
    if "image_index" not in table:
        logger.warning("scores_%s.csv: its images have no image_index; %s left out.", set_name, column)
        return
    if not set(table["image_index"]) <= set(values.index):
        logger.warning("scores_%s.csv: %s was measured on other images of %s; left out.", set_name, column, set_name)
        return
    table[column] = values.loc[table["image_index"].to_numpy()].to_numpy()


# --- the paper's detector: figures and TensorBoard -------------------------------------------------

def write_figures(evaluation: Evaluation) -> None:
    from ddpm_ood.evaluation.figures import auroc_per_t_figure, examples_figure, histogram_figure, roc_figure

    run, headline = evaluation.run, evaluation.headline
    scores = headline.scores[headline.main]
    in_scores = scores["in"].to_numpy()
    ood_scores = {name: scores[name].to_numpy() for name in evaluation.ood_sets}
    label = f"{run.name}: {headline.main} score"
    roc_figure(in_scores, ood_scores, run.figures / "roc.png", f"ROC, {label}")
    histogram_figure(in_scores, ood_scores, run.figures / "histograms.png", f"Scores, {label}")
    auroc_per_t_figure(evaluation.per_t, run.figures / "auroc_per_t.png", f"AUROC per start point, {label}")
    for name in headline.images:  # the reconstruction grids of the sets reconstruct.py kept examples of
        if kept_examples(run, name) is not None:
            with np.load(run.examples(name)) as examples:
                examples_figure(dict(examples), run.example_figure(name),
                                f"{name}: input, then its reconstruction from each start point")


def kept_examples(run, name: str, folder: str = ""):
    """A detector's ``examples_<set>.npz`` (the paper's in ``ood/``; ``folder``: another's results folder) if the
    set's results were made with it (their manifest records it), else None. A file the results do not record is
    left from an earlier reconstruction (redone with --restart and no --save_examples / --save_maps): it is never
    drawn, and maps made from it go."""
    from ddpm_ood.runs.layout import read_manifest

    path = run.examples(name, folder)
    if not path.exists():
        return None
    manifest = read_manifest(run.results(folder, name)) or {}
    if (manifest.get("examples") or {}).get("file") == path.name:
        return path
    logger.warning("%s was made by an earlier reconstruction than the results of %s: not drawn (re-run "
                   "reconstruct.py with --save_examples or --save_maps to keep new ones).", path, name)
    for stale in (run.maps(name, folder), run.maps_figure(name, folder)):
        stale.unlink(missing_ok=True)
    shutil.rmtree(run.scan_maps(name), ignore_errors=True)
    return None


def map_sources() -> list[tuple[str, str]]:
    """(results folder, map name) of every registered detector that keeps examples to draw maps from: the
    paper's reconstructions ('', 'recon') first, then e.g. the partial-diffusion detector's x0 predictions."""
    from ddpm_ood.detectors import DETECTORS, detector_class
    from ddpm_ood.detectors.base import Detector

    classes = {name: detector_class(name) for name in DETECTORS}
    return [(cls.folder(), name) for name, cls in classes.items() if cls.examples is not Detector.examples]


def write_maps(run, set_names) -> None:
    """Anomaly maps of the sets reconstruct.py kept examples of (``--save_maps``), for every detector that keeps
    them: the squared error z-scored on the validation set's, mean over t (``maps_<set>.npz`` in the detector's
    results folder, a figure each, and NIfTI scans' maps on their own grid), and, for the localisation table, the
    L1 residual and the no-model baseline."""
    from ddpm_ood.evaluation.anomaly_maps import (baseline_maps, error_maps, flag, map_threshold, residual_maps,
                                                  zscored_maps)
    from ddpm_ood.evaluation.figures import maps_figure
    from ddpm_ood.evaluation.scan_maps import write_scan_maps
    from ddpm_ood.utils.files import save_npz_atomic

    kept, maps, scan = {}, {}, {}
    for folder, source in map_sources():
        wanted = [name for name in set_names if kept_examples(run, name, folder) is not None]
        if not wanted:
            continue
        if kept_examples(run, "val", folder) is None:
            logger.warning("No %s anomaly maps: the validation set has no kept examples to z-score them on (re-run "
                           "reconstruct.py with --save_maps N and --run_val 1).", source)
            continue
        with np.load(run.examples("val", folder)) as val:
            val_maps, val_inputs = error_maps(val), val["inputs"]
        if len(val_maps) < 2:
            logger.warning("No %s anomaly maps: the validation set kept %d example(s); z-scores need at least 2.",
                           source, len(val_maps))
            continue
        for name in wanted:
            with np.load(run.examples(name, folder)) as examples:
                examples = dict(examples)
            try:
                z, mean = zscored_maps(error_maps(examples), val_maps)
            except ValueError as err:
                logger.warning("no %s anomaly maps for %s: %s", source, name, err)
                continue
            save_npz_atomic(run.maps(name, folder), z=z.astype(np.float32), mean=mean.astype(np.float32),
                            t=examples["t"], filenames=examples["filenames"])
            maps_figure(examples["inputs"], mean, run.maps_figure(name, folder),
                        f"{name}: where it is unusual ({source}: squared error z-scored on the validation images, "
                        "mean over t)", masks=examples.get("masks"))
            kept.setdefault(name, examples)
            maps.setdefault(name, {})
            maps[name].update({f"{source}_z": mean, f"{source}_l1": residual_maps(examples)})
            maps[name].setdefault("baseline", baseline_maps(examples["inputs"], val_inputs))
            if np.asarray(examples["inputs"]).ndim == 5:  # volumes: NIfTI scans' maps on each scan's grid
                scan.setdefault(name, {})["anomaly_z" if source == "recon" else f"{source}_z"] = mean
    thresholds = {}  # each map kind's 5 % healthy threshold, computed once for every set
    for name, kinds in scan.items():  # with each map's mask at that threshold, when there is one
        for kind in list(kinds):
            key = "recon_z" if kind == "anomaly_z" else kind
            if key in maps.get("in", {}):
                if key not in thresholds:
                    thresholds[key] = map_threshold(maps["in"][key], kept["in"])
                mask_name = "flagged" if kind == "anomaly_z" else kind.removesuffix("_z") + "_flagged"
                kinds[mask_name] = flag(maps[name][key], kept[name], thresholds[key])
        write_scan_maps(run.scan_maps(name), kept[name], kinds)
    for name in maps:  # the baseline last: each map is shown beside it
        maps[name]["baseline"] = maps[name].pop("baseline")
    write_localisation(run, maps, kept)


def write_localisation(run, maps: dict, kept: dict) -> None:
    """``ood/localisation.csv`` (pooled over each set's kept examples) and ``ood/localisation_per_image.csv``:
    how well each kind of map finds the lesions of the sets whose split CSVs give masks (``--save_maps N``),
    beside the no-model baseline; one line each printed."""
    from ddpm_ood.evaluation.anomaly_maps import localisation_rows

    path, per_image = run.ood / "localisation.csv", run.ood / "localisation_per_image.csv"
    if not any("masks" in examples for examples in kept.values()):
        for stale in (path, per_image):  # none now: an older table would describe other maps
            stale.unlink(missing_ok=True)
        return
    if "in" not in kept:
        logger.warning("No localisation metrics: the thresholds come from the in-distribution test set's maps, and "
                       "it kept none (reconstruct.py --save_maps N --run_in 1).")
        return
    images: list[dict] = []
    rows = localisation_rows(maps, kept, images=images)
    save_csv_atomic(path, pd.DataFrame(rows))
    save_csv_atomic(per_image, pd.DataFrame(images))
    for row in rows:
        print(f"Localisation on {row['set']} ({row['map']}, {row['n_images']} images): pixel AUPRC "
              f"{row['pixel_auprc']:.3f}, best Dice {row['best_dice']:.3f}, Dice at 5% of healthy voxels "
              f"{row['dice_at_5pct']:.3f}, pixel AUROC {row['pixel_auroc']:.3f}; scan AUROC of the map's 99th "
              f"percentile {row['scan_auroc_p99']:.3f}")


def log_to_tensorboard(evaluation: Evaluation) -> None:
    """Metrics, score histograms and precision-recall curves beside the training logs, so that
    ``tensorboard --logdir=${output_root}`` shows the whole run."""
    from torch.utils.tensorboard import SummaryWriter

    headline = evaluation.headline
    scores = headline.scores[headline.main]
    # One evaluation's events: the previous evaluation's would show stale metrics beside these.
    for events in evaluation.run.tensorboard_scoring.glob("events.out.tfevents.*"):
        events.unlink()
    with SummaryWriter(log_dir=str(evaluation.run.tensorboard_scoring)) as writer:
        for row in evaluation.rows:
            for metric in METRIC_NAMES:
                writer.add_scalar(f"{row.ood_set}/{row.score}/{metric}", row.metrics[metric], 0)
        for name in ["in", *evaluation.ood_sets]:
            writer.add_histogram(f"scores/{name}", scores[name].to_numpy(), 0)
        for name in evaluation.ood_sets:
            values = np.r_[scores["in"].to_numpy(), scores[name].to_numpy()]
            labels = np.r_[np.zeros(len(scores["in"])), np.ones(len(scores[name]))]
            # add_pr_curve wants probabilities: a monotone map to [0, 1] keeps the curve.
            spread = np.ptp(values) or 1.0
            writer.add_pr_curve(f"pr/{name} (OOD positive)", labels, (values - values.min()) / spread, 0)
