"""Reading results files (``results_<set>.csv``, any detector's) back for scoring, checked.

A results file is refused, naming the file, the CSV line and the value, when it cannot be read,
lacks a column, has no rows, holds a value that is not a finite number or a second row for one
image. The detectors' readers build on these (:mod:`ddpm_ood.detectors`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ddpm_ood.utils.errors import ScoringError
from ddpm_ood.metrics.scoring import show_value

REDO = "Re-run reconstruct.py with --restart for this set."


def read_results_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a results CSV written by reconstruct.py (any detector's): readable, with ``columns``, not empty."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ScoringError(f"Cannot read results file {path}: {err}. Re-run reconstruct.py for it.") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoringError(f"Results file {path} lacks column(s) {missing}; it was not written by reconstruct.py.")
    if frame.empty:
        raise ScoringError(f"Results file {path} has no rows. Re-run reconstruct.py for it.")
    return frame


def csv_line(frame: pd.DataFrame, position: int) -> str:
    """The CSV line of a row (the header is line 1)."""
    return f"line {int(frame.index[position]) + 2}"


def image_key(frame: pd.DataFrame) -> str:
    """The column that names an image: image_index, or filename in files without it."""
    return "image_index" if "image_index" in frame.columns else "filename"


def first_bad(mask) -> int:
    return int(np.argmax(np.asarray(mask)))


def read_feature_results(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a per-image results file and check it: its columns, numbers, finiteness, one row per image."""
    frame = read_results_csv(path, ["filename", "image_index", *columns])
    for column in ("image_index", *columns):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            at = first_bad(bad)
            raise ScoringError(f"{path} {csv_line(frame, at)}: {column} = {show_value(frame[column].iloc[at])} is "
                               f"not a finite number. {REDO}")
        frame[column] = values
    frame["image_index"] = frame["image_index"].astype(np.int64)
    duplicated = frame["image_index"].duplicated().to_numpy()
    if duplicated.any():
        at = first_bad(duplicated)
        raise ScoringError(f"{path} {csv_line(frame, at)}: a second row for image_index {frame['image_index'].iloc[at]}. "
                           f"{REDO}")
    return frame
