"""Fit files (ddpm_ood.detectors.fits): fits of other settings, of test images, of identical or too few images are refused."""
from __future__ import annotations

import subprocess
import sys

import pytest

import reconstruct
from conftest import ROOT, make_images, write_split
from ddpm_ood.api import OODDetector
from ddpm_ood.utils.errors import ScoringError
from helpers.pipeline import tiny_reconstruct_args, tiny_score


@pytest.mark.slow
def test_a_fit_of_other_reconstruction_settings_is_refused(scored_copy):
    out, paths = scored_copy
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=recon", "--inference_skip_factor=2", "--restart"))
    with pytest.raises(ScoringError, match=r"recon.json was fitted on other results .*start points"):
        OODDetector.load(out / "m", device="cpu")


def test_a_fit_set_of_test_images_is_refused(scored_copy):
    out, paths = scored_copy
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=msma", f"--fit_ids={paths['test']}", "--run_val=0",
                                      "--run_out=0", "--run_in=0"))
    with pytest.raises(ScoringError, match=r"msma/results_fit.csv \(the fit set\) and .*msma/results_in.csv share 6"):
        tiny_score(out, "--fit_on=fit")


def test_a_fit_on_identical_images_is_refused_naming_the_detector(scored_copy, tmp_path):
    out, paths = scored_copy
    same = make_images(tmp_path / "same", "z", 1, 9)[0]
    fit = write_split(tmp_path / "Same.csv", [same] * 12)
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=msma", f"--fit_ids={fit}", "--run_val=0",
                                      "--run_out=0", "--run_in=0"))
    with pytest.raises(ScoringError, match=r"msma: feature \d+ has the same value for all 12 fit images"):
        tiny_score(out, "--fit_on=fit")


@pytest.mark.slow
def test_a_fit_set_too_small_fails_before_anything_is_printed(scored_copy, tmp_path):
    out, paths = scored_copy
    few = write_split(tmp_path / "Few.csv", make_images(tmp_path / "few", "f", 5, 7))
    reconstruct.main(tiny_reconstruct_args(out, paths, "--detectors=msma", f"--fit_ids={few}", "--run_val=0",
                                      "--run_out=0", "--run_in=0"))
    result = subprocess.run([sys.executable, str(ROOT / "ood_detection.py"), f"--output_dir={out}", "--model_name=m",
                             "--fit_on=fit"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert "5 fit images" in result.stderr and "--fit_ids" in result.stderr


def test_a_fit_file_round_trips_and_an_edit_is_refused(tmp_path):
    """write_fit seals the record, read_fit gives it back; one changed number and the seal refuses it."""
    import json

    from ddpm_ood.detectors.fits import read_fit, write_fit
    from ddpm_ood.runs.layout import RunFiles

    run = RunFiles(tmp_path / "m")
    record = {"detector": "combo", "main": "combo", "fit_set": "val", "members": {"combo": ["recon", "msma"]},
              "state": {"mean": [0.5, 1.0]}, "tpr": 0.95, "threshold_set": "val", "thresholds": {"combo": 1.25}}
    path = write_fit(run, record)
    assert path == run.fit("combo") and read_fit(run, "combo") == record
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "thresholds": {"combo": 9.0}}))
    with pytest.raises(ScoringError, match="combo.json was changed after ood_detection.py wrote it"):
        read_fit(run, "combo")
    with pytest.raises(ScoringError, match="msma.json does not exist"):
        read_fit(run, "msma")
