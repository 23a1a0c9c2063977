"""z-scores, the OOD score and AUROC on hand-built frames with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ddpm_ood.detectors.recon import ReconDetector
from ddpm_ood.metrics.scoring import ScoringError, auroc, select_start_t


def fit_validation_stats(val, metrics, source="The validation results"):
    """The paper's per-t statistics of each metric, as ood_detection.py fits them."""
    return ReconDetector(10, sorted(val["t"].unique()), metrics).fit(val, source=source)


def score_frame(frame, stats, metrics):
    """The paper's score of each image, from the statistics of fit_validation_stats."""
    detector = ReconDetector(10, sorted(frame["t"].unique()), metrics)
    return detector.score(stats, frame).scores[detector.primary]


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
    assert stats.mean.loc[1, "mse"] == 3.0
    assert stats.std.loc[1, "mse"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
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


def test_select_start_t_max_min_and_t_skip():
    f = frame({1: [0.0], 11: [0.0], 21: [0.0], 31: [0.0]})
    assert select_start_t(f["t"], max_start_t=21) == [1, 11]
    assert select_start_t(f["t"], t_skip=2) == [1, 21]
    assert select_start_t(f["t"], min_start_t=11, max_start_t=31) == [11, 21]
    assert select_start_t([31, 1, 11, 1], min_start_t=2, t_skip=2) == [11]


def test_t_values_missing_from_validation_are_an_error():
    from ddpm_ood.detectors.recon import check_start_points

    stats = fit_validation_stats(frame({1: [0.0, 1.0]}), ["mse"])
    with pytest.raises(ScoringError, match=r"t = \[11\] has no fitted"):
        stats.apply(frame({1: [0.0], 11: [0.0]}), ["mse"])
    with pytest.raises(ScoringError, match=r"results_X.csv has start points t=\[11\]"):
        check_start_points(frame({1: [0.0], 11: [0.0]}), {1}, [1], "results_X.csv")
    with pytest.raises(ScoringError, match=r"results_X.csv lacks start points t=\[11\]"):
        check_start_points(frame({1: [0.0]}), {1, 11}, [1, 11], "results_X.csv")


@pytest.mark.parametrize("in_scores,ood_scores,expected", [
    ([0.1, 0.2], [0.3, 0.4], {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0, "fpr95tpr": 0.0}),  # perfect
    # Inverted: the precision-recall curve (recall 1, 0.5, 0; precision 1/2, 1/3, 0, then the end point
    # (0, 1)) has trapezoids 0.5 (1/2 + 1/3) / 2 + 0.5 (1/3 + 0) / 2 = 7/24.
    ([0.3, 0.4], [0.1, 0.2], {"auroc": 0.0, "aupr_in": 7 / 24, "aupr_out": 7 / 24, "fpr95": 1.0, "fpr95tpr": 1.0}),
    # All tied: one threshold (recall 1, precision 1/2), then the end point (0, 1): (1/2 + 1) / 2.
    ([0.5, 0.5], [0.5, 0.5], {"auroc": 0.5, "aupr_in": 0.75, "aupr_out": 0.75, "fpr95": 1.0, "fpr95tpr": 1.0}),
    # By hand: 7 of 8 (in, OOD) pairs ordered. AUPR-Out: from recall 1 to 0.5 at precisions 2/3 and 1/2,
    # then 0.5 to 0 at precision 1: 0.5 (2/3 + 1/2) / 2 + 0.5 = 19/24. AUPR-In: 0.25 (0.8 + 0.75) / 2 + 3 x 0.25
    # = 151/160. FPR@95 (in positive): accepting all four in-distribution images (score <= 0.4) accepts the
    # OOD 0.35: 1/2. FPR95TPR (OOD positive): catching both OOD images (score >= 0.35) flags the 0.4: 1/4.
    ([0.1, 0.2, 0.3, 0.4], [0.35, 0.5], {"auroc": 0.875, "aupr_in": 151 / 160, "aupr_out": 19 / 24, "fpr95": 0.5,
                                         "fpr95tpr": 0.25}),
])
def test_ood_metrics_known_answers(in_scores, ood_scores, expected):
    from ddpm_ood.metrics.scoring import ood_metrics
    values = ood_metrics(np.array(in_scores), np.array(ood_scores))
    assert values == pytest.approx(expected)


def scores_to_check():
    """Random, heavily tied and hand-built scores (in-distribution, OOD)."""
    rng = np.random.default_rng(0)
    cases = [(rng.normal(0, 1, n), rng.normal(shift, 1, m)) for n, m, shift in ((50, 70, 1.0), (7, 300, -0.5),
                                                                                 (400, 3, 2.0))]
    cases += [(rng.integers(0, 3, n).astype(float), rng.integers(0, 4, m).astype(float)) for n, m in ((40, 60), (5, 5))]
    cases += [(np.zeros(10), np.zeros(4)), (np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5])),
              (np.array([1.0, 2.0]), np.array([-5.0, 7.0, 2.0])), (np.array([3.0]), np.array([1.0, 2.0, 3.0, 4.0]))]
    return cases


@pytest.mark.filterwarnings("ignore:AUTC is undefined")
@pytest.mark.parametrize("case", range(len(scores_to_check())))
def test_metrics_equal_pytorch_oods(case):
    """Our AUROC, AUPR-In, AUPR-Out and fpr95tpr are pytorch-ood's OODMetrics (OOD labels < 0)."""
    import torch

    ood_metrics_class = pytest.importorskip("pytorch_ood.metrics").OODMetrics
    from ddpm_ood.metrics.scoring import ood_metrics

    in_scores, ood_scores = scores_to_check()[case]
    theirs = ood_metrics_class().update(torch.tensor(np.r_[in_scores, ood_scores]),
                                        torch.tensor(np.r_[np.zeros(len(in_scores)), -np.ones(len(ood_scores))]).long())
    theirs = theirs.compute()
    ours = ood_metrics(in_scores, ood_scores)
    for key, name in (("auroc", "AUROC"), ("aupr_in", "AUPR-IN"), ("aupr_out", "AUPR-OUT"), ("fpr95tpr", "FPR95TPR")):
        assert abs(ours[key] - theirs[name]) <= 1e-6, (key, ours[key], theirs[name])


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    from ddpm_ood.metrics.scoring import bootstrap_intervals, ood_metrics
    rng = np.random.default_rng(0)
    in_scores, ood_scores = rng.normal(0, 1, 80), rng.normal(1, 1, 60)
    a = bootstrap_intervals(in_scores, ood_scores, 100, seed=3)
    assert a == bootstrap_intervals(in_scores, ood_scores, 100, seed=3)
    assert a != bootstrap_intervals(in_scores, ood_scores, 100, seed=4)
    for name, value in ood_metrics(in_scores, ood_scores).items():
        low, high = a[name]
        assert low < value < high, name
    perfect = bootstrap_intervals(np.arange(5.0), np.arange(10.0, 15.0), 50)
    assert perfect["auroc"] == (1.0, 1.0) and perfect["fpr95"] == (0.0, 0.0) == perfect["fpr95tpr"]


def test_per_image_scores_and_the_metrics_table(tmp_path, capsys):
    import ood_detection
    from conftest import write_results

    def results(values):
        return pd.DataFrame([{"filename": f"f{i}.npy", "image_index": i, "type": "x", "t": t, "mse": v * (1 + t / 100),
                              "perceptual_difference": np.nan} for i, v in enumerate(values) for t in (1, 11)])

    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", results([1.0, 2.0, 3.0, 6.0]))
    write_results(ood, "in", results([1.5, 2.5]))
    write_results(ood, "Far", results([9.0, 12.0, 7.0]))
    summary = ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m",
                                                           "--bootstrap=20"]))
    out = capsys.readouterr().out
    assert "AUC for m vs Far: 100.0" in out
    assert "OOD set  detector  score  AUROC" in out and "100.0 [100.0, 100.0]" in out and "from 20 resamples" in out
    assert list(summary.columns[:3]) == ["ood_set", "detector", "score"]
    assert {"auroc", "n_in", "n_ood", "fpr95_high", "nfe_per_image"} <= set(summary)
    # Files without a recorded cost (written before reconstruct.py recorded it) show "?" for it.
    assert summary["nfe_per_image"].isna().all() and "recon     mse    ?" in out
    far = pd.read_csv(ood / "scores_Far.csv")
    assert list(far.columns) == ["filename", "image_index", "score", "z_mse_t1", "z_mse_t11"]
    assert far["filename"].tolist() == ["Far/f0.npy", "Far/f1.npy", "Far/f2.npy"]
    # z at t = 1: (mse - mean) / std over the validation values at t = 1; the score is their mean over t.
    val_t1 = np.array([1.0, 2.0, 3.0, 6.0]) * 1.01
    expected_z = (9.0 * 1.01 - val_t1.mean()) / val_t1.std(ddof=1)
    assert far["z_mse_t1"].iloc[0] == pytest.approx(expected_z)
    np.testing.assert_allclose(far["score"], far[["z_mse_t1", "z_mse_t11"]].mean(axis=1))
    val = pd.read_csv(ood / "scores_val.csv")
    assert abs(val["z_mse_t1"].mean()) < 1e-12 and val["z_mse_t1"].std() == pytest.approx(1.0)


def test_figures_and_the_auroc_per_start_point(tmp_path):
    import ood_detection
    from conftest import write_results
    from ddpm_ood.metrics.scoring import auroc

    rng = np.random.default_rng(0)

    def results(n, shift):  # OOD separates at t = 11 only
        return pd.DataFrame([{"filename": f"f{i}", "image_index": i, "type": "x", "t": t,
                              "mse": rng.normal(shift if t == 11 else 0, 1) + 10, "perceptual_difference": np.nan}
                             for i in range(n) for t in (1, 11)])

    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", results(30, 0))
    write_results(ood, "in", results(30, 0))
    write_results(ood, "Shifted", results(30, 3))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m", "--bootstrap=0"]))
    for name in ("roc.png", "histograms.png", "auroc_per_t.png"):
        data = (ood / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    per_t = pd.read_csv(ood / "auroc_per_t.csv")
    in_scores, shifted = (pd.read_csv(ood / f"scores_{name}.csv") for name in ("in", "Shifted"))
    for t in (1, 11):
        plotted = per_t.loc[per_t["t"] == t, "auroc"].item()
        assert plotted == pytest.approx(auroc(in_scores[f"z_mse_t{t}"].to_numpy(), shifted[f"z_mse_t{t}"].to_numpy()))
    assert per_t.set_index("t")["auroc"][11] > 0.95 and abs(per_t.set_index("t")["auroc"][1] - 0.5) < 0.2
    for png in (ood / "figures").iterdir():
        png.unlink()
    ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m", "--no_figures"]))
    assert not list((ood / "figures").iterdir())
