"""z-scores, the OOD score and AUROC on hand-built frames with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.scoring import ScoringError, auroc, fit_validation_stats, score_frame, select_t


def frame(values_by_t: dict[int, list[float]], lpips_offset: float = 0.0) -> pd.DataFrame:
    rows = []
    for t, values in values_by_t.items():
        for i, v in enumerate(values):
            rows.append({"filename": f"f{i}", "image_index": i, "type": "x", "t": t, "mse": v,
                         "perceptual_difference": v + lpips_offset})
    return pd.DataFrame(rows)


def test_validation_scores_are_z_scores():
    val = frame({1: [1.0, 2.0, 3.0, 6.0], 11: [10.0, 20.0, 30.0, 60.0]})
    stats = fit_validation_stats(val, ["mse"])
    assert stats.loc[1, ("mse", "mean")] == 3.0
    assert stats.loc[1, ("mse", "std")] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    scores = score_frame(val, stats, ["mse"])
    assert scores.mean() == pytest.approx(0.0, abs=1e-12)
    assert scores.std() == pytest.approx(1.0)  # both t give the same z, so the mean over t is that z


def test_score_is_mean_over_t_of_summed_z():
    val = frame({1: [0.0, 2.0], 11: [0.0, 4.0]})  # means 1, 2; stds sqrt(2), sqrt(8)
    stats = fit_validation_stats(val, ["mse", "lpips"])
    test = frame({1: [3.0], 11: [2.0]})
    z1, z11 = (3 - 1) / np.sqrt(2), (2 - 2) / np.sqrt(8)
    assert score_frame(test, stats, ["mse", "lpips"]).iloc[0] == pytest.approx((2 * z1 + 2 * z11) / 2)
    assert score_frame(test, stats, ["mse"]).iloc[0] == pytest.approx((z1 + z11) / 2)


def test_auroc_known_answers():
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75


def test_select_t_max_t_and_t_skip():
    f = frame({1: [0.0], 11: [0.0], 21: [0.0], 31: [0.0]})
    assert sorted(select_t(f, max_t=21)["t"].unique()) == [1, 11]
    assert sorted(select_t(f, t_skip=2)["t"].unique()) == [1, 21]


def test_t_values_missing_from_validation_are_an_error():
    stats = fit_validation_stats(frame({1: [0.0, 1.0]}), ["mse"])
    with pytest.raises(ScoringError, match=r"t=\[11\]"):
        score_frame(frame({1: [0.0], 11: [0.0]}), stats, ["mse"], source="results_X.csv")
