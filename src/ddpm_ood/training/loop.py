"""The training machinery both trainers share (train.py's DDPM and train_vqvae.py's first stage);
each keeps only its own step, validation and files.

:class:`TrainingRun` owns the position (epoch, batch in the epoch, optimizer steps) and walks it:
each epoch's data order is a permutation seeded by (seed, epoch) (:func:`epoch_order`); a
checkpoint holds the position, the order of the epoch in progress, its loss sums, the whole RNG
state (Python, NumPy, torch, CUDA) and the best validation loss, so that a run killed anywhere
and re-run goes on exactly as an uninterrupted run would. Checkpoints are written atomically,
keeping the one before (``checkpoint_prev.pth``), and read with a fall-back to it
(:func:`load_resume_state`). A resumed run is refused when a fixed setting, the data or the
kind of run differs; a run with model files but no checkpoint is never trained afresh over them.
Every step checks its loss and gradients for non-finite values before the optimizer moves
(:func:`check_finite`), and ``--max_minutes`` stops every process at the same step, after
validating, with a checkpoint at that exact position. TensorBoard gets the epoch's losses.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ddpm_ood.models.model_file import read_model_file
from ddpm_ood.runs.layout import RunFiles
from ddpm_ood.utils.distributed import Dist
from ddpm_ood.utils.errors import CheckpointError, ConfigError, NonFiniteLoss
from ddpm_ood.utils.files import remove_stale_temporaries, save_torch_atomic
from ddpm_ood.utils.runtime import check_interrupted

logger = logging.getLogger(__name__)

# The kind of run each checkpoint kind belongs to (the "kind" entry of a checkpoint file).
CHECKPOINT_KINDS = {"checkpoint": "train.py (a DDPM)", "first_stage_checkpoint": "train_vqvae.py (a first stage)"}


FIRST_CHECKPOINT_PENDING = ".first_checkpoint_pending"  # in a fresh run's folder until its first checkpoint


def epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of epoch ``epoch``: a permutation seeded by (seed, epoch), the same on every rank."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_images, generator=generator)


def rng_state() -> dict:
    """Every random number generator a training step may draw from, as a checkpoint keeps it."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict | torch.Tensor) -> None:
    """Restore :func:`rng_state`'s record (or the bare torch CPU state of a first stage's checkpoint from 0.4)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(run: RunFiles, kind: str = "checkpoint") -> dict | None:
    """The newest whole training checkpoint of a run, or None for a fresh run.

    ``checkpoint.pth`` is tried first, then ``checkpoint_prev.pth`` (the one before it). A
    damaged file is reported and skipped; if checkpoints exist but none is whole, training
    stops rather than silently starting from scratch. A checkpoint of the other trainer is no
    damage: the run folder belongs to another kind of run, and that is what is said.
    """
    candidates = [p for p in (run.checkpoint, run.previous_checkpoint) if p.exists()]
    problems = []
    for path in candidates:
        try:
            state = read_model_file(path)
        except CheckpointError as err:
            logger.warning("%s", err)
            problems.append(str(path))
            continue
        found = state.get("kind")
        if found != kind:
            if found in CHECKPOINT_KINDS:
                raise ConfigError(f"{run.dir} is a run of {CHECKPOINT_KINDS[found]}, not of {CHECKPOINT_KINDS[kind]}: "
                                  f"its {path.name} cannot be resumed here. Use another --model_name.")
            logger.warning("%s is not a training checkpoint (kind %r).", path, found)
            problems.append(str(path))
            continue
        if path == run.previous_checkpoint:
            logger.warning("Resuming from the previous checkpoint %s.", path)
        return state
    if problems:
        raise CheckpointError(
            f"No whole training checkpoint in {run.dir} ({', '.join(problems)} damaged). Move them away to "
            "start training afresh, or restore a backup."
        )
    return None


def refuse_another_kind_of_run(run: RunFiles, kind: str) -> None:
    """Before any work: a run folder that holds the other trainer's files (a first stage's, for
    train.py) is named as such; training here would write over it."""
    from ddpm_ood.models.model_file import peek_kind

    theirs = {"checkpoint": ("first_stage", "first_stage_checkpoint"),
              "first_stage_checkpoint": ("model", "checkpoint")}[kind]
    for path in (run.checkpoint, run.best_model, run.final_model):
        found = peek_kind(path) if path.is_file() else None
        if found in theirs:
            owner = "first_stage_checkpoint" if found.startswith("first_stage") else "checkpoint"
            raise ConfigError(f"{run.dir} is a run of {CHECKPOINT_KINDS[owner]} (its {path.name}), not of "
                              f"{CHECKPOINT_KINDS[kind]}: use another --model_name; nothing was written.")


def save_checkpoint(run: RunFiles, state: dict) -> None:
    """Write checkpoint.pth atomically, keeping the one before as checkpoint_prev.pth. The new file
    is written whole first and the two rotated only then: a write that fails (a full disk) leaves
    both the checkpoint and the one before it as they were."""
    def rotate() -> None:
        if run.checkpoint.exists():
            os.replace(run.checkpoint, run.previous_checkpoint)

    save_torch_atomic(run.checkpoint, state, before_replace=rotate)


def check_finite(loss: torch.Tensor, parameters, check_grads: bool, dist: Dist = Dist(),
                 flag: float = 0.0) -> float:
    """Raise NonFiniteLoss if the loss (or, unless a GradScaler handles them, a gradient) is not
    finite on any rank. One host synchronisation per step: the loss and the gradients' total
    norm are summed on the device (NaN and inf carry through a sum), summed over the ranks with
    ``flag`` (any rank's vote, e.g. out of time) and read once. Returns the summed flags."""
    total = loss.detach().float()
    if check_grads:
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            total = total + torch.nn.utils.get_total_norm(grads, foreach=True).float()
    both = dist.all_reduce_sum(torch.stack([total, torch.full((), flag, device=total.device)]))  # a fill, no copy
    total_value, flags = both.tolist()
    if not math.isfinite(total_value):
        what = "loss" if not torch.isfinite(loss).item() else "gradient"
        raise NonFiniteLoss(f"Non-finite {what}{'' if dist.world_size == 1 else ' on some rank'}")
    return flags


def check_resume_preprocessing(run_dir: Path, state: dict, current: dict | None) -> None:
    """A run resumes on volumes made as its own were (the data digests would differ too: this names why)."""
    from ddpm_ood.data.loading import describe_preprocessing, record_intensity

    stored = state.get("preprocessing")  # none in a 2D min-max run's files (nor in any made before --intensity)
    if ("preprocessing" in state and stored != current) or record_intensity(stored) != record_intensity(current):
        raise ConfigError(f"The run in {run_dir} was trained on {describe_preprocessing(stored)}; this command asks for "
                          f"{describe_preprocessing(current)}. Resume with its --image_roi, --image_size and "
                          "--intensity, or start a new --model_name.")


def fixed_setting_changes(stored: dict | None, current: dict, keys) -> list[str]:
    """The fixed settings a resumed run would change, as 'key was -> now' (none for an old checkpoint)."""
    if stored is None:
        return []
    return [f"{key} {stored[key]!r} -> {current[key]!r}" for key in keys if key in stored and stored[key] != current[key]]


class StepResult(NamedTuple):
    losses: dict  # name -> this rank's loss of the step, a 0-d tensor on the device
    flags: float  # the ranks' summed flags (how many are out of time)


class TrainingRun:
    """One run's position and the epoch loop that advances it; a trainer subclasses it with its step.

    A subclass sets ``checkpoint_kind`` and ``main_loss`` and implements :meth:`run_step` (one
    optimisation step on a batch of the epoch's order), :meth:`validate` (the validation loss;
    previews to ``self.writer``), :meth:`training_state` / :meth:`load_training_state` (networks
    and optimizers in a checkpoint), :meth:`write_model` (best_model.pth / final_model.pth) and
    :meth:`check_resume` (what a resumed run must keep).
    """

    checkpoint_kind = "checkpoint"
    main_loss = "loss"  # the loss kept as a checkpoint's epoch_loss_sum
    label = ""  # the epoch log lines' prefix
    noun = "training"  # what is resumed or stopped, in the log lines

    def __init__(self, settings, run_dir: Path, n_images: int, device: torch.device, dist: Dist = Dist()):
        self.settings, self.run_dir, self.device, self.dist = settings, Path(run_dir), device, dist
        self.files = RunFiles(run_dir)
        self.n_images = n_images
        self.steps_per_epoch = math.ceil(n_images / settings.batch_size)
        # The position: epoch and batch to continue from, optimizer steps taken.
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_val, self.val_loss = math.inf, None
        self.resumed_loss_sums: dict[str, float] = {}
        self.resumed_order: torch.Tensor | None = None
        self.writer = None
        self.started = time.monotonic()

    # --- what a trainer provides ------------------------------------------------------------

    def run_step(self, rows: torch.Tensor, flag: float) -> StepResult:
        raise NotImplementedError

    def validate(self, epochs_done: int) -> float:
        raise NotImplementedError

    def training_state(self) -> dict:
        raise NotImplementedError

    def load_training_state(self, state: dict) -> None:
        raise NotImplementedError

    def write_model(self, path: Path, epochs_done: int) -> None:
        raise NotImplementedError

    def check_resume(self, state: dict) -> None:
        """Refuse a resume that would change what the run is (ConfigError naming what changed)."""

    def describe(self) -> dict:
        """The settings written to TensorBoard's hparams table."""
        return {}

    def begin_epoch(self) -> None:
        """Before an epoch's first step (e.g. the networks back to training mode after validation)."""

    def learning_rate(self) -> float | None:
        return None

    # --- state ------------------------------------------------------------------------------

    def checkpoint_state(self, loss_sums: dict[str, float], order: torch.Tensor) -> dict:
        state = {"kind": self.checkpoint_kind, **self.training_state(), "epoch": self.epoch,
                 "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                 "epoch_loss_sum": loss_sums.get(self.main_loss, 0.0), "data_order": order.cpu(),
                 "best_val_loss": self.best_val, "rng": rng_state()}
        if set(loss_sums) - {self.main_loss}:
            state["epoch_loss_sums"] = loss_sums
        return state

    def save(self, loss_sums: dict[str, torch.Tensor], order: torch.Tensor) -> None:
        """checkpoint.pth at the current position; the epoch's loss sums are reduced over the ranks
        (a collective: every rank calls this at the same steps), and rank 0 writes."""
        totals = {name: self.dist.all_reduce_sum(value.detach().clone()).item() for name, value in loss_sums.items()}
        if self.dist.is_main:
            save_checkpoint(self.files, self.checkpoint_state(totals, order))
            (self.run_dir / FIRST_CHECKPOINT_PENDING).unlink(missing_ok=True)

    def snapshot(self) -> None:
        """checkpoint_<epoch>.pth: a copy of the checkpoint just written, kept (ddpm-ood's ``--checkpoint_every``);
        score with it by ``reconstruct.py --eval_checkpoint checkpoint_<epoch>.pth``."""
        from ddpm_ood.utils.files import copy_file_atomic

        target = self.run_dir / f"checkpoint_{self.epoch}.pth"
        copy_file_atomic(self.files.checkpoint, target)
        logger.info("%skept a snapshot of epoch %d: %s", self.label, self.epoch, target)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: the checks, then the networks, the position and the RNG."""
        self.check_resume(state)
        self.load_training_state(state)
        set_rng_state(state["rng"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state.get("batch_in_epoch", 0), state["step"]
        if self.batch_in_epoch:  # inside an epoch: continue with the order that epoch was using
            self.resumed_order = state["data_order"]
            if self.dist.is_main:  # the other ranks' sums start at 0: the reduction adds them once
                self.resumed_loss_sums = state.get("epoch_loss_sums") or \
                    {self.main_loss: state.get("epoch_loss_sum", 0.0)}
        self.best_val = state["best_val_loss"]

    def read_resume_state(self) -> dict | None:
        """The run's newest whole checkpoint of this trainer's kind, or None for a fresh run (after
        removing what a killed write left)."""
        if self.dist.is_main:
            remove_stale_temporaries(self.run_dir)
        return load_resume_state(self.files, self.checkpoint_kind)

    def model_files(self) -> list[str]:
        """The model files already in the run folder: a fresh start must not train over them, unless a fresh
        run wrote them before it stopped short of its first checkpoint (a full disk there: the re-run its
        message advises starts afresh)."""
        found = [p.name for p in (self.files.best_model, self.files.final_model) if p.exists()]
        if found and (self.run_dir / FIRST_CHECKPOINT_PENDING).exists() and not self.files.checkpoint.exists():
            logger.info("%s holds %s from a run stopped before its first checkpoint: training afresh.", self.run_dir,
                        " and ".join(found))
            return []
        return found

    # --- the loop ---------------------------------------------------------------------------

    def out_of_time(self) -> bool:
        return self.settings.max_minutes is not None and \
            (time.monotonic() - self.started) / 60 >= self.settings.max_minutes

    def step_at(self, order: torch.Tensor, index: int) -> StepResult:
        """Batch ``index`` of the epoch; a non-finite value stops the run naming the step."""
        check_interrupted()
        batch = self.settings.batch_size
        try:
            result = self.run_step(order[index * batch:(index + 1) * batch], float(self.out_of_time()))
        except NonFiniteLoss as err:
            last = self.files.checkpoint
            raise NonFiniteLoss(
                f"{err} at epoch {self.epoch + 1}, step {self.step + 1}; nothing was updated or saved from it. The "
                f"last good checkpoint is {last if last.exists() else '(none yet)'}. Lower the learning rate, use "
                "--precision fp32, or check the data, then re-run to resume.") from None
        self.step += 1
        return result

    def run_epoch(self) -> bool:
        """Train from the current position to the end of the epoch, or until out of time (then
        validate and checkpoint there). Returns True if the run must stop (out of time)."""
        settings, epoch = self.settings, self.epoch
        self.begin_epoch()
        order = self.resumed_order if self.resumed_order is not None else \
            epoch_order(self.n_images, settings.seed, epoch)
        order = order.to(self.order_device())
        self.resumed_order = None
        resumed = self.resumed_loss_sums if self.batch_in_epoch else {}
        loss_sums: dict[str, torch.Tensor] = {}
        time_up = False
        for i in tqdm(range(self.batch_in_epoch, self.steps_per_epoch), desc=f"{self.label}epoch {epoch + 1}/"
                      f"{settings.n_epochs}", initial=self.batch_in_epoch, total=self.steps_per_epoch, leave=False,
                      unit="step", disable=not self.dist.is_main):
            result = self.step_at(order, i)
            for name, value in result.losses.items():
                if name not in loss_sums:
                    loss_sums[name] = torch.tensor(resumed.get(name, 0.0), device=self.device)
                loss_sums[name] += value.detach()
            time_up = result.flags > 0  # every rank sees the same sum, so all stop together
            self.batch_in_epoch = i + 1
            if i + 1 < self.steps_per_epoch and time_up:
                # Out of time inside the epoch: validate first (so the checkpoint knows the best
                # validation loss), then checkpoint this exact position; a re-run goes on from here.
                self.evaluate(epoch)
                self.save(loss_sums, order)
                logger.info("Stopping %s at epoch %d, batch %d of %d: --max_minutes=%s reached. Re-run the same "
                            "command to continue.", self.noun, epoch + 1, i + 1, self.steps_per_epoch,
                            settings.max_minutes)
                return True
            every = getattr(settings, "checkpoint_every_steps", 0)
            if every and self.step % every == 0 and i + 1 < self.steps_per_epoch:
                self.save(loss_sums, order)
        means = {name: self.dist.all_reduce_sum(value).item() / self.steps_per_epoch
                 for name, value in loss_sums.items()}
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"train/{name}", value, self.step)
            if self.learning_rate() is not None:
                self.writer.add_scalar("train/lr", self.learning_rate(), self.step)
        if self.dist.is_main:
            described = ", ".join(f"{'train loss' if name == 'loss' else name} {value:.5f}"
                                  for name, value in means.items())
            logger.info("%sepoch %d/%d: %s", self.label, self.epoch, settings.n_epochs, described)
        last_epoch = self.epoch == settings.n_epochs
        if self.epoch % settings.eval_freq == 0 or last_epoch or time_up:
            self.evaluate(self.epoch)
        self.save({}, order)  # every epoch: a crash never loses more than the epoch it is in
        every = getattr(settings, "checkpoint_every", 0)
        if every and self.epoch % every == 0 and self.dist.is_main:
            self.snapshot()
        if time_up and not last_epoch:
            logger.info("Stopping %s after epoch %d: --max_minutes=%s reached.", self.noun, self.epoch,
                        settings.max_minutes)
        return time_up

    def order_device(self) -> torch.device:
        return torch.device("cpu")

    def evaluate(self, epochs_done: int) -> None:
        """The validation loss (the ranks agree on it); best_model.pth when it improves."""
        self.val_loss = self.validate(epochs_done)
        if not self.dist.is_main:
            self.best_val = min(self.best_val, self.val_loss)
            return
        logger.info("%sepoch %d: validation loss %.5f (best %.5f)", self.label, epochs_done, self.val_loss,
                    min(self.best_val, self.val_loss))
        if self.val_loss < self.best_val:
            self.best_val = self.val_loss
            self.write_model(self.files.best_model, epochs_done)

    def summary(self, **extra) -> dict:
        return {"epochs": self.epoch, "steps": self.step, "best_val_loss": self.best_val, **extra}

    def run_loop(self) -> dict:
        """Train to --n_epochs (or --max_minutes) and write final_model.pth. Returns a summary."""
        from torch.utils.tensorboard import SummaryWriter

        settings = self.settings
        if self.epoch >= settings.n_epochs:
            if self.dist.is_main:
                logger.info("The run in %s is already complete (%d of --n_epochs=%d epochs); nothing to train. "
                            "Raise --n_epochs to train further.", self.run_dir, self.epoch, settings.n_epochs)
            if not self.files.final_model.exists():  # killed between the last checkpoint and this file
                self.write_model(self.files.final_model, self.epoch)
            return self.summary(already_complete=True)
        if self.step and self.dist.is_main:
            logger.info("Resuming %s at epoch %d, batch %d (step %d).", self.noun, self.epoch + 1,
                        self.batch_in_epoch, self.step)
        if self.dist.is_main:
            self.writer = SummaryWriter(log_dir=str(self.files.tensorboard), purge_step=self.step)
            described = self.describe()
            if described:
                self.writer.add_text("hparams", "| setting | value |\n| --- | --- |\n" + "\n".join(
                    f"| {k} | {v} |" for k, v in described.items()), self.step)
        if not self.step and self.dist.is_main and not self.files.checkpoint.exists():
            # Until its first checkpoint, the model files a fresh run writes may be trained over by a re-run.
            (self.run_dir / FIRST_CHECKPOINT_PENDING).touch()
        self.started = time.monotonic()
        try:
            while self.epoch < settings.n_epochs:
                if self.run_epoch():
                    break
        finally:
            if self.writer is not None:
                self.writer.close()
        if self.val_loss is None:  # stopped before any validation: final_model.pth still records one
            self.evaluate(self.epoch)
        self.write_model(self.files.final_model, self.epoch)
        return self.summary()
