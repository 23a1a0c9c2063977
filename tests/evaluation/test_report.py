"""What ood_detection.py reports (ddpm_ood.evaluation.report): a detector that drops out, one TensorBoard log."""
from __future__ import annotations

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
