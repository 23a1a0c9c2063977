"""The evaluation library on toy results: typed results, known answers, nothing printed or written."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_results
from ddpm_ood.evaluation.scores import Options, evaluate
from ddpm_ood.runs.layout import RunFiles
from ddpm_ood.utils.errors import ScoringError
from helpers.pipeline import score_run, toy_results


def recon_results(values, ts=(1, 11), scale=1.0):
    return pd.DataFrame([{"filename": f"f{i}.npy", "image_index": i, "type": "x", "t": t, "mse": v * (1 + t * scale),
                          "perceptual_difference": np.nan} for i, v in enumerate(values) for t in ts])


def feature_results(folder, name, values, **settings):
    """A denoise-style results file (one row per image, columns denoise_mse_t0, denoise_mse_t500)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"filename": [f"{name}/f{i}.npy" for i in range(len(values))], "image_index": range(len(values)),
                          "type": name, "denoise_mse_t0": values, "denoise_mse_t500": np.asarray(values) * 2})
    frame.to_csv(folder / f"results_{name}.csv", index=False)
    from conftest import RESULTS_SETTINGS

    model = {k: RESULTS_SETTINGS[k] for k in ("model_file", "model_file_bytes", "model_file_mtime_ns", "model_id", "seed",
                                              "precision", "is_grayscale", "noise")}
    manifest = {**model, "detector": "denoise", "denoise_t": [0, 500], "chunk_size": 512, "split": f"{name}.csv",
                "n_images": len(values), **settings}
    (folder / f"results_{name}.settings.json").write_text(json.dumps(manifest))


@pytest.fixture
def run(tmp_path):
    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", recon_results([1.0, 2.0, 3.0, 6.0]))
    write_results(ood, "in", recon_results([1.5, 2.5]))
    write_results(ood, "Far", recon_results([9.0, 12.0, 7.0]))
    feature_results(ood / "denoise", "val", [1.0, 2.0, 4.0, 5.0])
    feature_results(ood / "denoise", "in", [3.0, 3.0])
    feature_results(ood / "denoise", "Far", [10.0, 0.0, 6.0])
    return RunFiles(tmp_path / "m")


def test_evaluate_returns_every_detector_and_score_and_prints_and_writes_nothing(run, capsys):
    before = sorted(p.name for p in run.ood.rglob("*"))
    evaluation = evaluate(run, Options(bootstrap=0))
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in run.ood.rglob("*")) == before
    assert evaluation.ood_sets == ["Far"]
    assert [(r.name, r.main) for r in evaluation.results] == [("recon", "mse"), ("denoise", "denoise"),
                                                               ("combo", "combo")]
    assert [(row.detector, row.score, row.ood_set) for row in evaluation.rows] == [
        ("recon", "mse", "Far"), ("denoise", "denoise", "Far"), ("combo", "combo", "Far")]
    assert evaluation.headline is evaluation.results[0] and evaluation.result("combo").members == {
        "combo": ["recon", "denoise"]}
    summary = evaluation.summary()
    assert list(summary.columns[:4]) == ["ood_set", "detector", "score", "auroc"] and "auroc_low" not in summary


def test_scores_are_the_published_z_scores(run):
    evaluation = evaluate(run, Options(bootstrap=0))
    recon = evaluation.headline.scores["mse"]
    # The paper's score: per t, (mse - validation mean) / validation std (ddof 1), then the mean over t.
    val = np.array([1.0, 2.0, 3.0, 6.0])
    expected = np.mean([(9.0 * (1 + t) - val.mean() * (1 + t)) / (val.std(ddof=1) * (1 + t)) for t in (1, 11)])
    assert recon["Far"].iloc[0] == pytest.approx(expected)
    assert recon["val"].mean() == pytest.approx(0.0, abs=1e-12)
    denoise = evaluation.result("denoise").scores["denoise"]
    dval = np.array([1.0, 2.0, 4.0, 5.0])
    assert denoise["in"].iloc[0] == pytest.approx((3.0 - dval.mean()) / dval.std(ddof=1))  # both t give the same z
    combo = evaluation.result("combo").scores["combo"]
    z = lambda s, fit: (s - fit.mean()) / fit.std(ddof=1)
    np.testing.assert_allclose(combo["Far"], z(recon["Far"], recon["val"]) + z(denoise["Far"], denoise["val"]))
    # Per-t parts and the threshold of the paper's score.
    assert set(evaluation.per_t["Far"]) == {1, 11} and evaluation.per_t["Far"][1] == 1.0
    fit = evaluation.headline.fit
    assert fit["thresholds"] == {"mse": recon["val"].max()} and fit["main"] == "mse" and fit["tpr"] == 0.95
    assert fit["state"]["keys"] == [1, 11] and fit["settings"]["start_t"] == [1, 11]
    assert evaluation.result("combo").fit["members"] == {"combo": ["recon", "denoise"]}


def test_start_point_options_select_what_is_scored(run):
    only_late = evaluate(run, Options(bootstrap=0, min_start_t=5))
    assert set(only_late.per_t["Far"]) == {11}
    assert evaluate(run, Options(bootstrap=0, max_start_t=5)).per_t["Far"].keys() == {1}
    assert evaluate(run, Options(bootstrap=0, t_skip=2)).per_t["Far"].keys() == {1}
    with pytest.raises(ScoringError, match="No validation start points left"):
        evaluate(run, Options(bootstrap=0, min_start_t=100))


def test_a_detector_of_another_model_is_refused_naming_both_files(run):
    other = {"model_id": "7" * 64}
    feature_results(run.ood / "denoise", "Far", [10.0, 0.0, 6.0], **other)
    with pytest.raises(ScoringError, match=r"denoise/results_Far.csv was made with other settings than .*"
                                           r"denoise/results_val.csv .*: model identity"):
        evaluate(run, Options(bootstrap=0))
    feature_results(run.ood / "denoise", "val", [1.0, 2.0, 4.0, 5.0], **other)
    feature_results(run.ood / "denoise", "in", [3.0, 3.0], **other)
    with pytest.raises(ScoringError, match=r"denoise/results_val.csv was made with other settings than .*"
                                           r"ood/results_val.csv .*: model identity"):
        evaluate(run, Options(bootstrap=0))


def test_a_difference_shows_this_files_value_first(run):
    """Main before this said 'results_Far.csv was made with other settings than results_val.csv: seed (0 vs 1)'
    for a Far made with seed 1: the values the wrong way round."""
    write_results(run.ood, "Far", recon_results([9.0, 12.0, 7.0]), seed=1)
    with pytest.raises(ScoringError, match=r"results_Far.csv was made with other settings than .*results_val.csv "
                                           r"\(its value vs that file's\): seed \(1 vs 0\)"):
        evaluate(run, Options(bootstrap=0))


def test_fit_on_fit_needs_a_detector_measured_on_the_fit_set(run):
    with pytest.raises(ScoringError, match="--fit_on=fit: no detector results_fit.csv"):
        evaluate(run, Options(bootstrap=0, fit_on="fit"))
    feature_results(run.ood / "denoise", "fit", [0.5, 1.0, 1.5, 9.0])
    evaluation = evaluate(run, Options(bootstrap=0, fit_on="fit"))
    fit = np.array([0.5, 1.0, 1.5, 9.0])
    assert evaluation.result("denoise").scores["denoise"]["in"].iloc[0] == pytest.approx((3 - fit.mean()) / fit.std(ddof=1))
    assert "fit" in evaluation.result("denoise").scores["denoise"]


def test_results_of_another_model_are_refused_before_anything_is_printed(tmp_path, capsys):
    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", toy_results())
    write_results(ood, "in", toy_results())
    write_results(ood, "A", toy_results(offset=1))
    write_results(ood, "B", toy_results(offset=1), model_file_mtime_ns=2, model_id="8" * 64, seed=3)  # retrained
    with pytest.raises(ScoringError) as err:
        score_run(tmp_path)
    message = str(err.value)
    assert "results_B.csv" in message and "results_val.csv" in message
    assert "model identity" in message and "seed" in message and "reconstruct.py" in message
    assert capsys.readouterr().out == ""


def test_zero_validation_spread_is_refused(tmp_path):
    ood = tmp_path / "m" / "ood"
    flat = toy_results()
    flat.loc[flat["t"] == 11, "mse"] = 0.5
    write_results(ood, "val", flat)
    write_results(ood, "in", toy_results())
    write_results(ood, "X", toy_results())
    with pytest.raises(ScoringError, match=r"results_val.csv: mse has standard deviation 0.0 at t = 11") as refused:
        score_run(tmp_path)
    # Both causes named: alike fit images, or a model (a 6-second first stage, met in the 3D demo) that maps every
    # image to the same value.
    assert "--fit_ids" in str(refused.value) and "first stage, trained too briefly" in str(refused.value)
