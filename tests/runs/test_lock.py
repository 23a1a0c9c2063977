"""One process per run folder (ddpm_ood.runs.lock): a second one stops naming the holder."""
from __future__ import annotations

import os

import pytest

from conftest import TINY_CONFIG
from ddpm_ood.runs.lock import run_lock
from ddpm_ood.utils.errors import RunLocked
from helpers.pipeline import reconstruct_tiny, run_script, train_tiny


def test_a_second_reconstruction_of_one_run_stops_naming_the_holder(tmp_path, synthetic_splits):
    out = tmp_path / "models"
    train_tiny(out, synthetic_splits)
    with run_lock(out / "m" / "ood", "reconstruct"):
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()}"):
            reconstruct_tiny(out, synthetic_splits)
    assert not list((out / "m" / "ood").glob("results_*"))  # nothing written by the refused run
    reconstruct_tiny(out, synthetic_splits)  # the lock is gone with its holder


@pytest.mark.slow
def test_a_second_training_of_one_run_exits_2_naming_the_holder(tmp_path, synthetic_splits):
    with run_lock(tmp_path / "m", "train"):
        result = run_script("train.py", f"--output_dir={tmp_path}", "--model_name=m",
                            f"--training_ids={synthetic_splits['train']}", f"--validation_ids={synthetic_splits['val']}",
                            f"--config_diffusion_file={TINY_CONFIG}", "--num_workers=0")
    assert result.returncode == 2 and f"pid {os.getpid()}" in result.stderr and "Traceback" not in result.stderr


def test_both_trainers_take_one_lock_on_a_run_folder(tmp_path, synthetic_splits):
    """train.py and train_vqvae.py on one --model_name: the second stops, naming the holder (they
    used to lock different files, and the DDPM's files overwrote the first stage's)."""
    import train_vqvae

    with run_lock(tmp_path / "m", "train"):  # as train.py holds it
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()}"):
            train_vqvae.main(train_vqvae.parse_args([
                f"--output_dir={tmp_path}", "--model_name=m", f"--training_ids={synthetic_splits['train']}",
                f"--validation_ids={synthetic_splits['val']}", "--num_workers=0", "--perceptual_weight=0"]))
    assert not (tmp_path / "m" / "checkpoint.pth").exists()


def test_a_refused_new_run_leaves_no_folder_and_a_started_one_keeps_its_files(tmp_path):
    """Refused before it wrote anything, a new run leaves neither its folder nor a lock file; a run that wrote
    something keeps it (and its lock file); an existing folder is never removed."""
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "new", "train"):
            raise ValueError("refused")
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "wrote", "train"):
            (tmp_path / "wrote" / "config.yaml").write_text("x")
            raise ValueError("failed later")
    assert (tmp_path / "wrote" / "config.yaml").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "old", "train"):
            raise ValueError("refused")
    assert (tmp_path / "old").is_dir()
