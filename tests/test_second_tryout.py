"""The second hostile try-out (issue 19): each case failed before, numbered as in the issue."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import ood_detection
import reconstruct
import train
from conftest import blob_splits, ROOT, TINY_CONFIG, make_images, reseal, write_results, write_split
from ddpm_ood.api import OODDetector
from ddpm_ood.data.loading import load_split
from ddpm_ood.utils.errors import CheckpointError, ConfigError, DataError, ScoringError, WriteError


def train_args(out, paths, *extra, epochs=1):
    return train.parse_args([f"--output_dir={out}", "--model_name=m", f"--training_ids={paths['train']}",
                             f"--validation_ids={paths['val']}", f"--config_diffusion_file={TINY_CONFIG}",
                             f"--n_epochs={epochs}", "--batch_size=8", "--num_sample_images=0", "--num_workers=0",
                             *extra])


def reconstruct_args(out, paths, *extra):
    return reconstruct.parse_args([f"--output_dir={out}", "--model_name=m", f"--validation_ids={paths['val']}",
                                   f"--in_ids={paths['test']}", f"--out_ids={paths['ood']}", "--num_inference_steps=10",
                                   "--inference_skip_factor=3", "--metrics=mse", "--batch_size=4", "--num_workers=0",
                                   "--msma_levels=3", "--denoise_levels=2", "--path_steps=3", *extra])


def score(out, *extra):
    return ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=m", "--bootstrap=0",
                                                        "--no-figures", *extra]))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Splits, and a tiny run trained, measured by the paper's detector and msma, and scored."""
    tmp = tmp_path_factory.mktemp("tryout")
    paths = blob_splits(tmp)
    out = tmp / "runs"
    train.main(train_args(out, paths))
    reconstruct.main(reconstruct_args(out, paths, "--detectors=recon,msma"))
    score(out)
    return out, paths


@pytest.fixture
def run(scored, tmp_path):
    """A copy of the scored run to damage."""
    out, paths = scored
    shutil.copytree(out, tmp_path / "runs")
    return tmp_path / "runs", paths


# --- never lose a trained model, never score with another model's numbers ----------------------------

def test_1_model_files_without_a_checkpoint_are_never_trained_over(run):
    out, paths = run
    final = out / "m" / "final_model.pth"
    before = {p.name: p.read_bytes() for p in (out / "m").glob("*_model.pth")}
    for checkpoint in (out / "m").glob("checkpoint*.pth"):
        checkpoint.unlink()  # deleted to save disk
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume from.*--init_weights=final_model.pth"):
        train.main(train_args(out, paths, epochs=2))
    assert {p.name: p.read_bytes() for p in (out / "m").glob("*_model.pth")} == before
    # Going on from its weights: a tiny learning rate keeps them (a fresh start would not).
    old = torch.load(final, weights_only=True)["model"]
    train.main(train_args(out, paths, "--init_weights=final_model.pth", "--lr=1e-12", epochs=1))
    new = torch.load(final, weights_only=True)["model"]
    assert all(torch.allclose(old[k], new[k], atol=1e-6) for k in old)
    with pytest.raises(ConfigError, match="has a checkpoint to resume from"):
        train.main(train_args(out, paths, "--init_weights=final_model.pth", epochs=2))


def test_2_new_images_are_refused_after_retraining(scored, tmp_path):
    _, paths = scored
    out = tmp_path / "own"
    train.main(train_args(out, paths))
    reconstruct.main(reconstruct_args(out, paths, "--detectors=recon"))
    score(out)
    train.main(train_args(out, paths, epochs=2))  # training goes on ...
    shutil.copy(out / "m" / "final_model.pth", out / "m" / "best_model.pth")  # ... and makes a new best model
    with pytest.raises(ScoringError, match=r"made with another model .*\(weights differ\)"):
        OODDetector.load(out / "m", device="cpu")
    result = subprocess.run([sys.executable, str(ROOT / "ood_detection.py"), f"--output_dir={out}", "--model_name=m",
                             f"--score_ids={paths['ood']}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "made with another model" in result.stderr and "Traceback" not in result.stderr


def test_3_a_fit_of_other_reconstruction_settings_is_refused(run):
    out, paths = run
    reconstruct.main(reconstruct_args(out, paths, "--detectors=recon", "--inference_skip_factor=2", "--restart"))
    with pytest.raises(ScoringError, match=r"recon.json was fitted on other results .*start points"):
        OODDetector.load(out / "m", device="cpu")


def test_4_a_full_disk_while_checkpointing_keeps_both_checkpoints(run, monkeypatch):
    from ddpm_ood.utils import files
    from ddpm_ood.runs.layout import RunFiles
    from ddpm_ood.training.loop import save_checkpoint

    out, _ = run
    files_ = RunFiles(out / "m")
    shutil.copy(files_.checkpoint, files_.previous_checkpoint)
    before = files_.checkpoint.read_bytes(), files_.previous_checkpoint.read_bytes()

    def full_disk(obj, path):
        open(path, "wb").write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(files.torch, "save", full_disk)
    with pytest.raises(WriteError, match=r"Could not write .*checkpoint.pth: .*PytorchStreamWriter.*untouched"):
        save_checkpoint(files_, {"step": 1})
    assert (files_.checkpoint.read_bytes(), files_.previous_checkpoint.read_bytes()) == before
    assert not list((out / "m").glob(".ddpm_ood.*"))


# --- the Python API takes what a notebook passes, or says why not -------------------------------------

def test_5_to_7_the_api_prepares_images_as_the_loader_does_or_says_why_not(scored, tmp_path):
    out, paths = scored
    detector = OODDetector.load(out / "m", device="cpu", batch_size=4)
    images = load_split(paths["ood"], True).images
    reference = detector.score(images)
    raw = np.stack([np.load(f)[None] for f in pd.read_csv(paths["ood"])["filename"]])  # uint8 0..255, as stored
    np.testing.assert_allclose(detector.score(torch.from_numpy(raw)), reference, rtol=1e-6)  # scaled as files are
    # An image in [0, 0.8] (here a .npy of floats) scores the same through the API and --score_ids.
    dim = [tmp_path / f"dim_{i}.npy" for i in range(3)]
    for i, path in enumerate(dim):
        np.save(path, (raw[i] / 255.0 * 0.8).astype(np.float64)[0])
    listed = ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=m",
                                                          f"--score_ids={write_split(tmp_path / 'Dim.csv', dim)}"]))
    arrays = np.stack([np.load(path)[None] for path in dim])
    np.testing.assert_allclose(detector.score(torch.from_numpy(arrays)), listed["score"], rtol=1e-6)
    np.testing.assert_allclose(detector.score(raw.astype(np.float64)), reference, rtol=1e-6)  # a numpy array
    np.testing.assert_allclose(detector.score(list(images)), reference, rtol=1e-6)  # a list of images
    np.testing.assert_allclose(detector.score(images.clone().requires_grad_()), reference, rtol=1e-6)
    broken = images.clone()
    broken[2, 0, 3, 3] = float("nan")
    for bad, match in ((broken, "image 2 of the batch contains NaN"), (images[:0], "empty"),
                       ([], "empty"), (images[0], r"shape \(N, C, H, W\)"), ("x", "not str")):
        with pytest.raises(DataError, match=match):
            detector.score(bad)
    with pytest.raises(DataError, match="2 filenames for 6 images"):
        detector.score(images, ["a", "b"])
    inf = images.clone()
    inf[0, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="contains NaN or infinite"):
        detector.predict(inf)


# --- results and fits that would mislead --------------------------------------------------------------

def test_8_results_files_with_missing_images_are_refused(run, tmp_path):
    out, _ = run
    results = out / "m" / "ood" / "results_Stripes.csv"
    frame = pd.read_csv(results)
    frame[frame["image_index"] < 3].to_csv(results, index=False)  # half the rows deleted
    with pytest.raises(ScoringError, match="results_Stripes.csv was changed after reconstruct.py wrote it"):
        score(out)
    # Unsealed (by hand, or an older version): the image count and names in the manifest still tell.
    ood = tmp_path / "fake" / "m" / "ood"
    rows = lambda n: pd.DataFrame([{"filename": f"f{i}", "image_index": i, "type": "x", "t": t, "mse": 0.1 * i + t,
                                    "perceptual_difference": np.nan} for i in range(n) for t in (1, 11)])
    write_results(ood, "val", rows(4))
    write_results(ood, "in", rows(3))
    write_results(ood, "Far", rows(3))
    manifest = ood / "results_in.settings.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "n_images": 4}))
    with pytest.raises(ScoringError, match="results_in.csv holds 3 images, but its manifest records 4"):
        score(tmp_path / "fake")


def test_9_a_fit_set_of_test_images_is_refused(run):
    out, paths = run
    reconstruct.main(reconstruct_args(out, paths, "--detectors=msma", f"--fit_ids={paths['test']}", "--run_val=0",
                                      "--run_out=0", "--run_in=0"))
    with pytest.raises(ScoringError, match=r"msma/results_fit.csv \(the fit set\) and .*msma/results_in.csv share 6"):
        score(out, "--fit_on=fit")


def test_10_a_fit_on_identical_images_is_refused_naming_the_detector(run, tmp_path):
    out, paths = run
    same = make_images(tmp_path / "same", "z", 1, 9)[0]
    fit = write_split(tmp_path / "Same.csv", [same] * 12)
    reconstruct.main(reconstruct_args(out, paths, "--detectors=msma", f"--fit_ids={fit}", "--run_val=0",
                                      "--run_out=0", "--run_in=0"))
    with pytest.raises(ScoringError, match=r"msma: feature \d+ has the same value for all 12 fit images"):
        score(out, "--fit_on=fit")


def test_11_a_detector_that_drops_out_says_so_and_combo_names_its_members(run, capsys, caplog):
    out, _ = run
    summary = score(out)
    assert "combo = recon + msma" in capsys.readouterr().out
    for path in (out / "m" / "ood" / "msma").glob("results_val*"):
        path.unlink()
    with caplog.at_level("WARNING", logger="ddpm_ood"):
        summary = score(out)
    assert "msma is left out" in caplog.text and "results_val.csv is missing" in caplog.text
    assert set(summary["detector"]) == {"recon"}


def test_12_a_fit_set_too_small_fails_before_anything_is_printed(run, tmp_path):
    out, paths = run
    few = write_split(tmp_path / "Few.csv", make_images(tmp_path / "few", "f", 5, 7))
    reconstruct.main(reconstruct_args(out, paths, "--detectors=msma", f"--fit_ids={few}", "--run_val=0",
                                      "--run_out=0", "--run_in=0"))
    result = subprocess.run([sys.executable, str(ROOT / "ood_detection.py"), f"--output_dir={out}", "--model_name=m",
                             "--fit_on=fit"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert "5 fit images" in result.stderr and "--fit_ids" in result.stderr


# --- flags and runs that surprise ---------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--path_steps", "1"), ("--msma_levels", "0"), ("--denoise_levels", "0")])
def test_13_detector_levels_are_range_checked_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as err:
        reconstruct.parse_args(["--output_dir=o", "--model_name=m", f"{flag}={value}"])
    assert err.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("name", ["path", "msma", "denoise"])
def test_13_detector_levels_above_the_models_timesteps_are_refused(name):
    """The most levels is the model's own T (1,000 for ours; a pretrained model may have another), not a constant."""
    from types import SimpleNamespace

    from ddpm_ood.detectors import detector_class
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    cls = detector_class(name)
    model = SimpleNamespace(schedule=DDPMSchedule(num_timesteps=50))
    assert cls.from_args(SimpleNamespace(**{cls.knob: 50}), model).nfe() == 50
    with pytest.raises(DataError, match=f"--{cls.knob} 51: .*the model has 50 timesteps"):
        cls.from_args(SimpleNamespace(**{cls.knob: 51}), model)


@pytest.mark.parametrize("flag", ["--max_t=300", "--tpr=0.9", "--fit_on=fit", "--t_skip=2", "--min_start_t=5"])
def test_14_score_ids_refuses_the_flags_that_choose_the_fit(scored, flag):
    out, paths = scored
    with pytest.raises(ConfigError, match="re-run ood_detection.py with them first"):
        ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=m",
                                                     f"--score_ids={paths['ood']}", flag]))


def test_15_under_torchrun_ood_detection_runs_once(run):
    out, _ = run
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "ood_detection.py"), f"--output_dir={out}", "--model_name=m", "--bootstrap=0", "--no-figures"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("AUC for m vs Stripes: ") == 1
    assert len(list((out / "m" / "tensorboard" / "ood_detection").glob("events.out.tfevents.*"))) == 1


def test_16_each_evaluation_replaces_the_previous_ones_events(run):
    out, _ = run
    score(out)
    score(out, "--max_t=500")
    assert len(list((out / "m" / "tensorboard" / "ood_detection").glob("events.out.tfevents.*"))) == 1


def test_17_a_moved_or_copied_run_scores_with_its_own_model(run, tmp_path):
    out, paths = run
    images = load_split(paths["ood"], True).images
    expected = OODDetector.load(out / "m", device="cpu").score(images)
    moved = tmp_path / "elsewhere" / "m"
    shutil.move(str(out / "m"), moved)
    score(moved.parent)  # the run's own results still score together
    np.testing.assert_allclose(OODDetector.load(moved, device="cpu").score(images), expected, rtol=1e-6)
    reconstruct.main(reconstruct_args(moved.parent, paths, "--detectors=recon,msma"))  # complete: nothing redone
    copy = tmp_path / "copy" / "m"
    shutil.copytree(moved, copy)
    train.main(train_args(moved.parent, paths, epochs=2))  # the original trains on; the copy keeps its model
    np.testing.assert_allclose(OODDetector.load(copy, device="cpu").score(images), expected, rtol=1e-6)


def test_17_get_datasets_converts_again_from_a_corrected_source(tmp_path, caplog):
    import get_datasets
    from helpers.data import make_idx_source

    make_idx_source(tmp_path / "wrong" / "MNIST", seed=1)
    make_idx_source(tmp_path / "right" / "MNIST", seed=2)
    prepare = lambda source: get_datasets.main(get_datasets.parse_args(
        [f"--data_root={tmp_path / 'data'}", "--datasets", "MNIST", "--source_dir", str(source)]))
    prepare(tmp_path / "wrong")
    first = np.load(pd.read_csv(tmp_path / "data" / "data_splits" / "MNIST_test.csv")["filename"][0])
    with caplog.at_level("INFO"):
        prepare(tmp_path / "right")
    assert "converting again" in caplog.text
    second = np.load(pd.read_csv(tmp_path / "data" / "data_splits" / "MNIST_test.csv")["filename"][0])
    assert not np.array_equal(first, second)
    # Results made from the old images are not taken for results of the new ones.
    from ddpm_ood.runs.layout import set_entries

    split = tmp_path / "data" / "data_splits" / "MNIST_test.csv"
    old = set_entries(split, None, ["a"], torch.from_numpy(first[None, None].astype(np.float32)))
    new = set_entries(split, None, ["a"], torch.from_numpy(second[None, None].astype(np.float32)))
    assert old["images_sha256"] != new["images_sha256"] and old["files_digest"] == new["files_digest"]


def test_17_very_long_names_are_refused_in_one_line(tmp_path, synthetic_splits, capsys):
    with pytest.raises(SystemExit):
        ood_detection.parse_args(["--output_dir=o", f"--model_name={'m' * 300}"])
    assert "too long a name" in capsys.readouterr().err
    long_csv = write_split(tmp_path / f"{'x' * 150}_test.csv", [synthetic_splits["test"]])
    from ddpm_ood.runs.layout import ood_set_name

    with pytest.raises(DataError, match="150 characters long"):
        ood_set_name(str(long_csv))


def test_17_an_edited_manifest_is_refused(run):
    out, _ = run
    manifest = out / "m" / "ood" / "results_in.settings.json"
    manifest.write_text(manifest.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(ScoringError, match="results_in.settings.json was changed after reconstruct.py wrote it"):
        score(out)
    reseal(manifest)  # what reconstruct.py would have written
    with pytest.raises(ScoringError, match=r"results_in.csv was made with other settings .*seed \(1 vs 0\)"):
        score(out)
