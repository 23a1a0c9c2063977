"""Every bad input stops with a message naming the file or value, and leaves earlier outputs alone."""
from __future__ import annotations

import errno

import numpy as np
import pandas as pd
import pytest

import ood_detection
import reconstruct
import train
from conftest import TINY_CONFIG, make_images, write_results, write_split
from ddpm_ood.data.loading import load_split
from ddpm_ood.models.loading import load_model
from ddpm_ood.models.model_file import CheckpointError
from ddpm_ood.utils.errors import DataError, ScoringError
from ddpm_ood.utils.files import WriteError, save_csv_atomic, save_torch_atomic
from helpers.pipeline import reconstruct_tiny, run_script, train_tiny


@pytest.mark.parametrize("flag,value", [("--inference_skip_factor", "0"), ("--first_n", "-1"),
                                        ("--num_inference_steps", "0")])
def test_bad_numbers_are_refused_by_the_parser(tmp_path, flag, value):
    result = run_script("reconstruct.py", f"--output_dir={tmp_path}", "--model_name=m", f"{flag}={value}")
    assert result.returncode == 2 and flag in result.stderr and value in result.stderr


def test_negative_checkpoint_interval_is_refused_by_the_parser(tmp_path):
    result = run_script("train.py", f"--output_dir={tmp_path}", "--model_name=m", "--training_ids=a.csv",
                        "--validation_ids=b.csv", "--checkpoint_every_steps=-5")
    assert result.returncode == 2 and "--checkpoint_every_steps" in result.stderr and "-5" in result.stderr


def test_skip_factor_larger_than_the_grid(tmp_path, synthetic_splits):
    train.main(train.parse_args([
        f"--output_dir={tmp_path}", "--model_name=m", f"--training_ids={synthetic_splits['train']}",
        f"--validation_ids={synthetic_splits['val']}", f"--config_diffusion_file={TINY_CONFIG}", "--n_epochs=1",
        "--batch_size=8", "--num_sample_images=0", "--num_workers=0"]))
    args = reconstruct.parse_args([f"--output_dir={tmp_path}", "--model_name=m", f"--validation_ids={synthetic_splits['val']}",
                                   "--run_in=0", "--run_out=0", "--num_inference_steps=10",
                                   "--inference_skip_factor=11", "--metrics=mse"])
    with pytest.raises(DataError, match="inference_skip_factor=11"):
        reconstruct.main(args)


def test_inf_pixels_and_constant_images(tmp_path):
    np.save(tmp_path / "inf.npy", np.array([[np.inf, 1.0]]))
    with pytest.raises(DataError, match="inf.npy contains NaN or infinite"):
        load_split(write_split(tmp_path / "a.csv", [tmp_path / "inf.npy"]), True)
    np.save(tmp_path / "flat.npy", np.full((4, 4), 9, np.uint8))
    flat = load_split(write_split(tmp_path / "b.csv", [tmp_path / "flat.npy"]), True)
    assert flat.images.abs().sum() == 0  # documented: a constant image becomes all zeros


def test_checkpoint_from_a_different_architecture(tmp_path):
    from omegaconf import OmegaConf

    from ddpm_ood.models.config import build_unet
    config = OmegaConf.to_container(OmegaConf.load(TINY_CONFIG))
    state = build_unet(config).state_dict()
    config["ldm"]["params"]["unet_config"]["params"]["model_channels"] = 16
    save_torch_atomic(tmp_path / "m.pth", {"kind": "model", "model": state, "config": config})
    with pytest.raises(CheckpointError, match="m.pth does not match the architecture"):
        load_model(tmp_path / "m.pth")
    (tmp_path / "t.pth").write_bytes((tmp_path / "m.pth").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="t.pth is truncated"):
        load_model(tmp_path / "t.pth")


def results(t_values, n=3, drop=None):
    frame = pd.DataFrame([{"filename": f"f{i}", "image_index": i, "type": "x", "t": t, "mse": 0.1 * i + t,
                           "perceptual_difference": np.nan} for i in range(n) for t in t_values])
    return frame.drop(columns=drop) if drop else frame


@pytest.mark.parametrize("ood_frame,match", [
    (results([1, 11], drop="mse"), r"results_Bad.csv lacks column\(s\) \['mse'\]"),
    (results([1, 11]).iloc[:0], "results_Bad.csv has no rows"),
    (results([1, 21]), r"results_Bad.csv has start points t=\[21\]"),
])
def test_bad_results_files(tmp_path, ood_frame, match):
    ood = tmp_path / "m" / "ood"
    write_results(ood, "val", results([1, 11]))
    write_results(ood, "in", results([1, 11]))
    write_results(ood, "Bad", results([1, 11]))
    ood_frame.to_csv(ood / "results_Bad.csv", index=False)
    with pytest.raises(ScoringError, match=match):
        ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m"]))


def test_unwritable_output_folder(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root ignores chmod, so simulate it
    with pytest.raises(WriteError, match=r"Cannot write .*summary.csv: Permission denied.*writable"):
        save_csv_atomic(tmp_path / "summary.csv", pd.DataFrame({"a": [1]}))


def test_disk_full_during_a_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results_in.csv"
    save_csv_atomic(target, pd.DataFrame({"a": [1, 2]}))
    before = target.read_bytes()

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    from pathlib import Path
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(WriteError, match="results_in.csv: No space left on device.*untouched"):
        save_csv_atomic(target, pd.DataFrame({"a": [3]}))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results_in.csv"]  # no temporary file left


@pytest.mark.slow
def test_write_errors_exit_2_from_a_script(tmp_path):
    ood = tmp_path / "m" / "ood"
    for name in ("val", "in", "X"):
        write_results(ood, name, results([1, 11]))
    (ood / "summary_auroc.csv").mkdir()  # a folder where the summary must go: os.replace fails
    result = run_script("ood_detection.py", f"--output_dir={tmp_path}", "--model_name=m")
    assert result.returncode == 2 and "summary_auroc.csv" in result.stderr and "Traceback" not in result.stderr


def test_images_of_another_size_than_the_model_are_refused(tmp_path, synthetic_splits):
    out = tmp_path / "models"
    train_tiny(out, synthetic_splits)
    big = write_split(tmp_path / "Big_test.csv", make_images(tmp_path / "big", "g", 3, 5, shape=(32, 32)))
    with pytest.raises(DataError, match=r"Big_test.csv \(e.g. .*g_0.npy\) have shape \(1, 32, 32\).*expects \(1, 28, 28\)"):
        reconstruct_tiny(out, synthetic_splits, f"--out_ids={big}", "--run_val=0", "--run_in=0")
    with pytest.raises(DataError, match=r"shape \(1, 32, 32\), but the training set .* expects \(1, 28, 28\)"):
        train.main(train.parse_args([
            f"--output_dir={out}", "--model_name=other", f"--training_ids={synthetic_splits['train']}",
            f"--validation_ids={big}", f"--config_diffusion_file={TINY_CONFIG}", "--num_workers=0"]))
