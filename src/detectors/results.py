"""Reading a feature detector's results (``ood/<detector>/results_<set>.csv``, one row per
image) for scoring, checked as strictly as the reconstruction results are: every file of a
detector from one model with one set of settings, every feature a finite number, one row per
image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import ScoringError
from src.results_store import ResultsStore
from src.scoring import csv_line, read_results_csv, read_settings, show_value

# Settings every results file scored together must share, besides the detector's own.
MODEL_SETTINGS = ("model_file", "model_file_bytes", "model_file_mtime_ns", "seed", "precision", "is_grayscale")
PER_SET_SETTINGS = ("split", "first_n", "n_images", "files_digest", "chunk_size")


def shared_settings(settings: dict) -> dict:
    """The part of a manifest that every file scored together must share."""
    ignored = (*PER_SET_SETTINGS, *ResultsStore.EXTRA_KEYS)
    return {k: v for k, v in settings.items() if k not in ignored}


def read_feature_results(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read one detector results file and check it: its columns, numbers, finiteness, one row per image."""
    redo = "Re-run reconstruct.py with --restart for this set."
    frame = read_results_csv(path, ["filename", "image_index", *columns])
    for column in ("image_index", *columns):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(np.argmax(bad))
            raise ScoringError(f"{path} {csv_line(frame, at)}: {column} = {show_value(frame[column].iloc[at])} is "
                               f"not a finite number. {redo}")
        frame[column] = values
    frame["image_index"] = frame["image_index"].astype(np.int64)
    duplicated = frame["image_index"].duplicated().to_numpy()
    if duplicated.any():
        at = int(np.argmax(duplicated))
        raise ScoringError(f"{path} {csv_line(frame, at)}: a second row for image_index {frame['image_index'].iloc[at]}. "
                           f"{redo}")
    return frame


def load_detector_sets(folder: Path, set_names: list[str], columns: list[str],
                       reference: dict | None = None) -> dict[str, pd.DataFrame]:
    """The results of one detector for each of ``set_names`` that it has (``folder/results_<set>.csv``).

    A results file without a settings manifest is refused. ``reference``: settings (of the reconstruction results) whose model settings these must share.
    Every file must share the settings of the detector's first set.
    """
    frames, first, first_path = {}, None, None
    for name in set_names:
        path = folder / f"results_{name}.csv"
        if not path.exists():
            continue
        settings = read_settings(path)
        if settings is None:
            raise ScoringError(f"{path} has no settings manifest, so reconstruct.py did not write it (or it was "
                               "deleted). Re-run reconstruct.py with --restart for that set.")
        shared = shared_settings(settings)
        if first is None:
            first, first_path = shared, path
        differing = sorted(k for k in set(first) | set(shared) if first.get(k) != shared.get(k))
        if reference is not None:
            differing += [k for k in MODEL_SETTINGS if reference.get(k) != settings.get(k) and k not in differing]
        if differing:
            other = first_path if first_path != path else "the reconstruction results"
            raise ScoringError(f"{path} was made with other settings than {other} ({', '.join(differing)}). Re-run "
                               "reconstruct.py for every set with one model and the same flags (--restart discards "
                               "the old results).")
        frames[name] = read_feature_results(path, columns)
    return frames
