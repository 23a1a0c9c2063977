"""What ood_detection.py reports (ddpm_ood.evaluation.report): a detector that drops out, one TensorBoard log."""
from __future__ import annotations

import pytest

from helpers.pipeline import tiny_score


def test_a_detector_that_drops_out_says_so_and_combo_names_its_members(scored_copy, capsys, caplog):
    out, _ = scored_copy
    summary = tiny_score(out)
    assert "combo = recon + msma" in capsys.readouterr().out
    for path in (out / "m" / "ood" / "msma").glob("results_val*"):
        path.unlink()
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        summary = tiny_score(out)
    assert "msma is left out" in caplog.text and "results_val.csv is missing" in caplog.text
    assert set(summary["detector"]) == {"recon"}


def test_each_evaluation_replaces_the_previous_ones_events(scored_copy):
    out, _ = scored_copy
    tiny_score(out)
    tiny_score(out, "--max_t=500")
    assert len(list((out / "m" / "tensorboard" / "ood_detection").glob("events.out.tfevents.*"))) == 1


def test_the_detector_table_lists_every_score_against_every_set():
    """A hand-made summary: one line per (detector, score), AUROC in % per OOD set, '-' where a set has none."""
    import pandas as pd

    from ddpm_ood.evaluation.report import detector_table

    summary = pd.DataFrame([
        {"detector": "recon", "score": "mse+lpips", "ood_set": "A", "auroc": 0.9876, "nfe_per_image": 350},
        {"detector": "recon", "score": "mse+lpips", "ood_set": "B", "auroc": 0.5, "nfe_per_image": 350},
        {"detector": "msma", "score": "msma", "ood_set": "A", "auroc": 0.25, "nfe_per_image": float("nan")},
    ])
    lines = detector_table(summary, ["A", "B"]).splitlines()
    assert lines[0] == "AUROC (%) of every detector, OOD positive:"
    assert lines[1].split() == ["detector", "score", "NFE/img", "A", "B"]
    assert lines[2].split() == ["recon", "mse+lpips", "350", "98.8", "50.0"]
    assert lines[3].split() == ["msma", "msma", "?", "25.0", "-"]


def test_the_figures_are_written_as_png_files(tmp_path):
    import numpy as np

    from ddpm_ood.evaluation.figures import histogram_figure, maps_figure, roc_figure

    rng = np.random.default_rng(0)
    scores_in, scores_out = rng.normal(0, 1, 50), {"far": rng.normal(3, 1, 40)}
    roc_figure(scores_in, scores_out, tmp_path / "roc.png", "ROC")
    histogram_figure(scores_in, scores_out, tmp_path / "hist.png", "scores")
    maps_figure(rng.random((3, 1, 16, 16)), rng.normal(size=(3, 16, 16)), tmp_path / "maps.png", "maps")
    for name in ("roc.png", "hist.png", "maps.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".ddpm_ood.*"))  # written atomically: no temporaries left


@pytest.mark.slow
def test_maps_are_drawn_only_from_the_examples_of_the_current_results(scored_copy, caplog):
    """After the model is retrained and reconstruct.py --restart runs without --save_maps, the old
    examples are not drawn, and the maps made from them go (they were rewritten beside the new
    model's scores); with no validation examples to z-score on, ood_detection.py says why there are
    no maps."""
    import shutil

    import reconstruct
    import train
    from ddpm_ood.runs.layout import RunFiles
    from helpers.pipeline import score_run, tiny_reconstruct_args, tiny_train_args

    out, paths = scored_copy
    run = RunFiles(out / "m")
    shutil.rmtree(out / "m" / "ood" / "msma")  # this test's models are the run's final ones: the paper's detector only
    final = "--eval_checkpoint=final_model.pth"
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=recon", "--save_maps=3", final, "--restart"))
    score_run(out, "--bootstrap=0")
    assert run.maps("Stripes").exists() and run.maps("in").exists()
    train.main(tiny_train_args(out, paths, epochs=2))  # another model
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=recon", final, "--restart"))
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        score_run(out, "--bootstrap=0")
    assert "was made by an earlier reconstruction" in caplog.text
    assert run.examples("Stripes").exists() and not run.maps("Stripes").exists() and not run.maps("in").exists()
    caplog.clear()
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=recon", "--save_maps=3", "--run_val=0", final))
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        score_run(out, "--bootstrap=0")
    assert "No recon anomaly maps: the validation set has no kept examples" in caplog.text
