"""Nothing lost, nothing half-written: killed and resumed training equals an uninterrupted run,
damaged checkpoints are detected, non-finite losses stop training before they do harm."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from conftest import ROOT, TINY_CONFIG, make_images, write_split
from ddpm_ood.models.model_file import CheckpointError
from ddpm_ood.training.ddpm import NonFiniteLoss


@pytest.fixture
def long_splits(tmp_path):
    return {
        "train": write_split(tmp_path / "t.csv", make_images(tmp_path / "tr", "b", 96, 0)),
        "val": write_split(tmp_path / "v.csv", make_images(tmp_path / "va", "b", 8, 1)),
    }


def command(out, splits, epochs=3, every_steps=1):
    return [
        f"--output_dir={out}", "--model_name=m", f"--training_ids={splits['train']}", f"--validation_ids={splits['val']}",
        "--is_grayscale=1", f"--config_diffusion_file={TINY_CONFIG}", f"--n_epochs={epochs}", "--batch_size=8",
        "--eval_freq=2", "--num_sample_images=0", "--num_workers=0", f"--checkpoint_every_steps={every_steps}",
        "--ema_decay=0.9",
    ]


def assert_same_training_state(a_path, b_path):
    a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema_model"]:
        assert torch.equal(a["ema_model"][key], b["ema_model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)


def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(tmp_path, long_splits):
    train.main(train.parse_args(command(tmp_path / "clean", long_splits)))
    args = [sys.executable, str(ROOT / "train.py"), *command(tmp_path / "killed", long_splits)]
    checkpoint = tmp_path / "killed" / "m" / "checkpoint.pth"
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 0.8))  # somewhere inside an epoch
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_same_training_state(tmp_path / "clean/m/checkpoint.pth", checkpoint)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, long_splits):
    train.main(train.parse_args(command(tmp_path / "clean", long_splits, epochs=3, every_steps=0)))
    run = tmp_path / "broken" / "m"
    train.main(train.parse_args(command(tmp_path / "broken", long_splits, epochs=2, every_steps=0)))
    assert (run / "checkpoint_prev.pth").exists()
    data = (run / "checkpoint.pth").read_bytes()
    (run / "checkpoint.pth").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    train.main(train.parse_args(command(tmp_path / "broken", long_splits, epochs=3, every_steps=0)))
    assert_same_training_state(tmp_path / "clean/m/checkpoint.pth", run / "checkpoint.pth")


def test_no_whole_checkpoint_stops_instead_of_starting_afresh(tmp_path, long_splits):
    run = tmp_path / "m"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="No whole training checkpoint"):
        train.main(train.parse_args(command(tmp_path, long_splits)))


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path, long_splits, monkeypatch):
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    real_loss = DDPMSchedule.training_loss
    calls = {"n": 0}

    def poisoned(self, model, x0, t, noise):
        calls["n"] += 1
        loss = real_loss(self, model, x0, t, noise)
        return loss * float("nan") if calls["n"] == 17 else loss  # step 17: epoch 2 (12 steps an epoch)

    monkeypatch.setattr(DDPMSchedule, "training_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 17.*checkpoint.pth"):
        train.main(train.parse_args(command(tmp_path, long_splits, every_steps=5)))
    saved = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    assert saved["step"] == 15  # the last one before the NaN
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def test_non_finite_gradient_with_a_finite_loss_stops_too(tmp_path, long_splits, monkeypatch):
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    class NanBackward(torch.autograd.Function):
        """Identity forward; NaN gradients backward (a finite loss whose gradients overflowed)."""

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    real_loss = DDPMSchedule.training_loss
    calls = {"n": 0}

    def poisoned(self, model, x0, t, noise):
        calls["n"] += 1
        loss = real_loss(self, model, x0, t, noise)
        return NanBackward.apply(loss) if calls["n"] == 8 else loss

    monkeypatch.setattr(DDPMSchedule, "training_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"Non-finite gradient at epoch 1, step 8"):
        train.main(train.parse_args(command(tmp_path, long_splits, every_steps=5)))
    saved = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_resume_inside_an_epoch_uses_the_stored_data_order(tmp_path, long_splits, monkeypatch):
    """The checkpoint's data order, not one derived again, drives the resumed epoch: with the order
    function broken during the resume, the epoch still ends exactly as the original run's. A
    resume with another --seed is refused (it would make the run a mix of two)."""
    from ddpm_ood.diffusion.ddpm import DDPMSchedule

    train.main(train.parse_args(command(tmp_path / "clean", long_splits, epochs=1, every_steps=2)))
    real_loss = DDPMSchedule.training_loss
    calls = {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real_loss(self, *args)

    monkeypatch.setattr(DDPMSchedule, "training_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main(train.parse_args(command(tmp_path / "resumed", long_splits, epochs=1, every_steps=2)))
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed/m/checkpoint.pth", weights_only=True)["batch_in_epoch"] == 4
    from ddpm_ood.utils.errors import ConfigError
    with pytest.raises(ConfigError, match="seed 0 -> 1"):
        train.main(train.parse_args(command(tmp_path / "resumed", long_splits, epochs=1, every_steps=2) + ["--seed=1"]))
    import ddpm_ood.training.ddpm
    monkeypatch.setattr(ddpm_ood.training.ddpm, "epoch_order", lambda n, seed, epoch: torch.arange(n).flip(0))
    train.main(train.parse_args(command(tmp_path / "resumed", long_splits, epochs=1, every_steps=2)))
    assert_same_training_state(tmp_path / "clean/m/checkpoint.pth", tmp_path / "resumed/m/checkpoint.pth")
