"""Nothing lost, nothing half-written, for both trainers (train.py's DDPM and train_vqvae.py's first
stage, which share ``ddpm_ood.training.loop``): killed and resumed training equals an uninterrupted
run, damaged checkpoints fall back to the previous one, non-finite losses and gradients stop
training before they do harm, a time-boxed stop keeps the best validation loss."""
from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import torch

import train
import train_vqvae
from conftest import ROOT, TINY_CONFIG, make_images, write_split
from ddpm_ood.utils.errors import CheckpointError, ConfigError, NonFiniteLoss, WriteError

pytestmark = pytest.mark.slow  # every test here trains, and several kill subprocesses


@pytest.fixture(scope="module")
def long_splits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long_splits")
    return {
        "train": write_split(folder / "t.csv", make_images(folder / "tr", "b", 96, 0)),
        "val": write_split(folder / "v.csv", make_images(folder / "va", "b", 8, 1)),
    }


@dataclass
class Trainer:
    """One training script as these tests drive it."""

    name: str
    script: object  # the script's module (parse_args, main)
    flags: list  # its own flags, beside the shared ones
    networks: tuple  # the state-dict entries of a checkpoint that must be equal
    optimizers: tuple  # the optimizer entries of a checkpoint that must be equal

    def command(self, out, splits, epochs=3, every_steps=1):
        return [f"--output_dir={out}", "--model_name=m", f"--training_ids={splits['train']}",
                f"--validation_ids={splits['val']}", "--is_grayscale=1", f"--n_epochs={epochs}", "--batch_size=8",
                "--num_workers=0", f"--checkpoint_every_steps={every_steps}", *self.flags]

    def run(self, out, splits, *extra, **kwargs):
        return self.script.main(self.script.parse_args(self.command(out, splits, **kwargs) + list(extra)))

    def poison(self, monkeypatch, make_bad, at_call: int):
        """Replace the step's loss with ``make_bad(loss)`` on call ``at_call`` of the loss function."""
        calls = {"n": 0}
        if self.name == "ddpm":
            from ddpm_ood.diffusion.ddpm import DDPMSchedule

            real = DDPMSchedule.training_loss

            def poisoned(schedule, *args):
                calls["n"] += 1
                loss = real(schedule, *args)
                return make_bad(loss) if calls["n"] == at_call else loss

            monkeypatch.setattr(DDPMSchedule, "training_loss", poisoned)
        else:
            from ddpm_ood.training.first_stage import AutoencoderTrainer

            real = AutoencoderTrainer.generator_losses

            def poisoned(trainer, *args):
                calls["n"] += 1
                losses = real(trainer, *args)
                if calls["n"] == at_call:
                    losses["generator"] = make_bad(losses["generator"])
                return losses

            monkeypatch.setattr(AutoencoderTrainer, "generator_losses", poisoned)


TRAINERS = [
    Trainer("ddpm", train, [f"--config_diffusion_file={TINY_CONFIG}", "--eval_freq=2", "--num_sample_images=0",
                            "--ema_decay=0.9"], ("model", "ema_model"), ("optimizer",)),
    Trainer("first_stage", train_vqvae, ["--vqvae_num_channels=[8,8]", "--vqvae_num_res_layers=1",
                                         "--vqvae_num_embeddings=16", "--vqvae_embedding_dim=2",
                                         "--perceptual_weight=0", "--eval_freq=2"],
            ("model", "discriminator"), ("optimizer_g", "optimizer_d")),
]


@pytest.fixture(params=TRAINERS, ids=lambda t: t.name)
def trainer(request):
    return request.param


def assert_same_training_state(trainer, a_path, b_path):
    a, b = (torch.load(p, weights_only=True) for p in (a_path, b_path))
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for entry in trainer.networks:
        for key in a[entry]:
            assert torch.equal(a[entry][key], b[entry][key]), (entry, key)
    for entry in trainer.optimizers:
        for index, state in a[entry]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b[entry]["state"][index][name]), (entry, index, name)


def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted_run(tmp_path, long_splits, trainer):
    trainer.run(tmp_path / "clean", long_splits)
    args = [sys.executable, str(ROOT / f"{trainer.script.__name__}.py"), *trainer.command(tmp_path / "killed",
                                                                                         long_splits)]
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
    assert_same_training_state(trainer, tmp_path / "clean/m/checkpoint.pth", checkpoint)


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, long_splits, trainer):
    trainer.run(tmp_path / "clean", long_splits, epochs=3, every_steps=0)
    run = tmp_path / "broken" / "m"
    trainer.run(tmp_path / "broken", long_splits, epochs=2, every_steps=0)
    assert (run / "checkpoint_prev.pth").exists()
    data = (run / "checkpoint.pth").read_bytes()
    (run / "checkpoint.pth").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    trainer.run(tmp_path / "broken", long_splits, epochs=3, every_steps=0)
    assert_same_training_state(trainer, tmp_path / "clean/m/checkpoint.pth", run / "checkpoint.pth")


def test_no_whole_checkpoint_stops_instead_of_starting_afresh(tmp_path, long_splits, trainer):
    run = tmp_path / "m"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="No whole training checkpoint"):
        trainer.run(tmp_path, long_splits)


def test_a_run_of_the_other_trainer_is_named_not_called_damaged(tmp_path, long_splits):
    """train.py on a first stage's run folder (and the reverse) says whose run it is, before it writes
    anything there (it used to call the checkpoint damaged and write config.yaml into the folder)."""
    first_stage, ddpm = tmp_path / "first_stage", tmp_path / "ddpm"
    TRAINERS[1].run(first_stage, long_splits, epochs=1, every_steps=0)
    TRAINERS[0].run(ddpm, long_splits, epochs=1, every_steps=0)
    before = sorted(p.name for p in (first_stage / "m").iterdir())
    with pytest.raises(ConfigError, match=r"is a run of train_vqvae.py \(a first stage\) \(its checkpoint.pth\), "
                                          r"not of train.py .*nothing was written"):
        TRAINERS[0].run(first_stage, long_splits, epochs=1, every_steps=0)
    assert sorted(p.name for p in (first_stage / "m").iterdir()) == before  # no config.yaml
    with pytest.raises(ConfigError, match=r"is a run of train.py \(a DDPM\) .*not of train_vqvae.py"):
        TRAINERS[1].run(ddpm, long_splits, epochs=1, every_steps=0)


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path, long_splits, monkeypatch, trainer):
    trainer.poison(monkeypatch, lambda loss: loss * float("nan"), at_call=17)  # step 17: epoch 2 (12 steps an epoch)
    with pytest.raises(NonFiniteLoss, match=r"loss at epoch 2, step 17.*checkpoint.pth"):
        trainer.run(tmp_path, long_splits, every_steps=5)
    saved = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    assert saved["step"] == 15  # the last one before the NaN
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


class NanBackward(torch.autograd.Function):
    """Identity forward; NaN gradients backward (a finite loss whose gradients overflowed)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_non_finite_gradient_with_a_finite_loss_stops_too(tmp_path, long_splits, monkeypatch, trainer):
    trainer.poison(monkeypatch, NanBackward.apply, at_call=8)
    with pytest.raises(NonFiniteLoss, match=r"Non-finite gradient at epoch 1, step 8"):
        trainer.run(tmp_path, long_splits, every_steps=5)
    saved = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_resume_inside_an_epoch_uses_the_stored_data_order(tmp_path, long_splits, monkeypatch, trainer):
    """The checkpoint's data order, not one derived again, drives the resumed epoch: with the order
    function broken during the resume, the epoch still ends exactly as the original run's. A
    resume with another --seed is refused (it would make the run a mix of two)."""
    import ddpm_ood.training.loop

    trainer.run(tmp_path / "clean", long_splits, epochs=1, every_steps=2)

    def interrupted(loss):
        raise KeyboardInterrupt("killed")

    trainer.poison(monkeypatch, interrupted, at_call=6)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(tmp_path / "resumed", long_splits, epochs=1, every_steps=2)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed/m/checkpoint.pth", weights_only=True)["batch_in_epoch"] == 4
    with pytest.raises(ConfigError, match="seed 0 -> 1"):
        trainer.run(tmp_path / "resumed", long_splits, "--seed=1", epochs=1, every_steps=2)
    monkeypatch.setattr(ddpm_ood.training.loop, "epoch_order", lambda n, seed, epoch: torch.arange(n).flip(0))
    trainer.run(tmp_path / "resumed", long_splits, epochs=1, every_steps=2)
    assert_same_training_state(trainer, tmp_path / "clean/m/checkpoint.pth", tmp_path / "resumed/m/checkpoint.pth")


def test_a_time_boxed_stop_validates_before_its_checkpoint(tmp_path, long_splits, monkeypatch, trainer):
    """Stopped by --max_minutes inside an epoch, the checkpoint knows the validation loss it just
    measured: the resumed run does not take a worse model for the best one."""
    import ddpm_ood.training.loop

    monkeypatch.setattr(ddpm_ood.training.loop.TrainingRun, "out_of_time", lambda run: run.step >= 5)  # the 6th step stops
    trainer.run(tmp_path, long_splits, "--max_minutes=1", epochs=1, every_steps=0)
    saved = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    best = torch.load(tmp_path / "m" / "best_model.pth", weights_only=True)
    assert saved["batch_in_epoch"] == 6 and saved["best_val_loss"] == best["val_loss"] < float("inf")


def test_a_full_disk_while_checkpointing_keeps_both_checkpoints(scored_copy, monkeypatch):
    from ddpm_ood.runs.layout import RunFiles
    from ddpm_ood.training.loop import save_checkpoint
    from ddpm_ood.utils import files

    out, _ = scored_copy
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


def test_a_full_disk_at_the_first_checkpoint_then_the_advised_rerun_trains_afresh(tmp_path, long_splits, monkeypatch,
                                                                                  trainer):
    """Issue 33, case 14: a full disk stopped a fresh run at its first checkpoint, after its best model was written;
    the re-run its message advises was refused ("holds best_model.pth but no checkpoint"). A run that had a
    checkpoint keeps its model files protected."""
    from ddpm_ood.training import loop
    from ddpm_ood.utils.errors import WriteError

    real = loop.save_checkpoint

    def full_disk(*args):
        raise WriteError("Could not write checkpoint.pth: No space left on device. Free some disk space, then re-run.")

    monkeypatch.setattr(loop, "save_checkpoint", full_disk)
    with pytest.raises(WriteError, match="No space left"):
        trainer.run(tmp_path, long_splits, "--eval_freq=1", epochs=2, every_steps=0)  # validated, then the disk is full
    assert (tmp_path / "m" / "best_model.pth").exists() and not (tmp_path / "m" / "checkpoint.pth").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real)
    summary = trainer.run(tmp_path, long_splits, "--eval_freq=1", epochs=2, every_steps=0)  # the advised re-run
    assert summary["epochs"] == 2 and not (tmp_path / "m" / loop.FIRST_CHECKPOINT_PENDING).exists()
    (tmp_path / "m" / "checkpoint.pth").unlink()
    (tmp_path / "m" / "checkpoint_prev.pth").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="but no checkpoint"):  # a real run's files stay protected
        trainer.run(tmp_path, long_splits, "--eval_freq=1", epochs=3, every_steps=0)
