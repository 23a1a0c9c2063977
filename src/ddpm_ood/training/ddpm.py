"""The DDPM training loop: Adam on the simple L2 loss, periodic validation, checkpoints; on one
process or, under torchrun, on several with DistributedDataParallel.

The pieces, after improved-diffusion's ``TrainLoop``: :class:`TrainLoop` owns the training
state (model, optimizer, GradScaler, EMA, position) and restores it from / writes it to a
checkpoint; :meth:`TrainLoop.run_step` is one optimisation step; :meth:`TrainLoop.run_loop`
the epochs; :meth:`TrainLoop.evaluate` validation and model selection.

Reproducible whatever the number of processes: the data order of epoch e is a permutation
seeded by (seed, e); every global batch of ``batch_size`` images is split into one contiguous
slice per rank; the timesteps and noise of step s are drawn for the whole batch from a
generator seeded by (seed, s), and each rank takes its slice. Each rank's loss is weighted by
its share of the batch, so the gradient DDP averages is the gradient of the whole batch's
mean loss, as in one process. A checkpoint holds the global position (epoch, batch, step), so
a run resumes at any world size.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from ddpm_ood.models.model_file import CheckpointError, read_file, save_model_file
from ddpm_ood.diffusion.ddpm import DDPMSchedule, PLMSSampler
from ddpm_ood.data.loading import mid_slices
from ddpm_ood.utils.distributed import Dist
from ddpm_ood.utils.errors import ConfigError, NonFiniteLoss
from ddpm_ood.utils.files import remove_stale_temporaries, save_torch_atomic
from ddpm_ood.models.loading import model_function
from ddpm_ood.runs.layout import RunFiles
from ddpm_ood.utils.runtime import autocast, check_interrupted, resolve_precision
from ddpm_ood.training.settings import FIXED_SETTINGS, TrainSettings, data_differences
from ddpm_ood.models.unet import compile_unet

logger = logging.getLogger(__name__)

# Training sets up to this size are copied to the GPU once, so batches never wait on the host.
MAX_DEVICE_DATA_BYTES = 8 * 2**30


def train_batch(images: torch.Tensor, order: torch.Tensor, index: int, batch_size: int, device: torch.device,
                memory_format=torch.contiguous_format) -> torch.Tensor:
    """Batch ``index`` of an epoch: (B, C, H, W) on ``device`` (a slice of in-memory data).

    Keep ``order`` on ``images.device``: otherwise every call copies its indices there, and a
    copy from pageable host memory to a GPU waits for the GPU's queue.
    """
    rows = order[index * batch_size:(index + 1) * batch_size].to(images.device)
    return images[rows].to(device, non_blocking=True).contiguous(memory_format=memory_format)


def epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_images, generator=generator)


@torch.no_grad()
def validation_loss(model, schedule: DDPMSchedule, images: torch.Tensor, batch_size: int, device, precision: str,
                    dist: Dist = Dist()) -> float:
    """Mean L2 loss over the validation set with fixed timesteps and noise, comparable across
    epochs. Under torchrun each rank takes every world_size-th batch and the sums are reduced."""
    generator = torch.Generator().manual_seed(1234)
    total = torch.zeros((), dtype=torch.float64, device=device)  # sum over batches of loss x images
    batches = range(0, len(images), batch_size)
    for k, start in enumerate(tqdm(batches, desc="validation", unit="batch", leave=False, disable=not dist.is_main)):
        x0 = images[start:start + batch_size]
        # Every rank draws every batch's numbers, so each batch gets the same ones on any world size.
        t = torch.randint(0, schedule.num_timesteps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        if k % dist.world_size != dist.rank:
            continue
        with autocast(precision, device):
            loss = schedule.training_loss(model, x0.to(device), t.to(device), noise.to(device))
        total += loss.detach().double() * len(x0)
    return dist.all_reduce_sum(total).item() / len(images)


@torch.no_grad()
def sample_images(model, schedule: DDPMSchedule, shape, n_steps: int, device, seed: int, space=None) -> torch.Tensor:
    """Draw images from pure noise with PLMS (for TensorBoard); ``space``: decode from it (a latent model)."""
    from ddpm_ood.diffusion.reconstruction import to_image

    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(n_steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    history: list[torch.Tensor] = []
    for t in tqdm(sampler.trajectory(len(sampler.grid) - 1), desc="sampling", unit="step", leave=False):
        eps = model(x, torch.full((shape[0],), t, device=device))
        x, history = sampler.step(eps, t, x, history, model)
    return to_image(x, space).clamp(0, 1)


@torch.no_grad()
def reconstruction_grid(model, schedule: DDPMSchedule, images: torch.Tensor, n_steps: int, device, seed: int,
                        start_t=(100, 300, 500), space=None) -> tuple[torch.Tensor, list[int]]:
    """A few images and their PLMS reconstructions from several start points, as one image grid
    (one row per image: the input, then each reconstruction); for TensorBoard during training."""
    from ddpm_ood.diffusion.reconstruction import reconstruction_examples

    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(n_steps)
    starts = sorted({int(np.abs(sampler.grid - t).argmin()) for t in start_t})
    examples = reconstruction_examples(model, schedule, sampler, images, starts, seed, device, space)
    inputs, recons = (torch.from_numpy(examples[k]) for k in ("inputs", "reconstructions"))  # (B, ...), (B, K, ...)
    rows = mid_slices(torch.cat([inputs[:, None], recons], dim=1).flatten(0, 1))  # (B * (K + 1), C, H, W)
    return make_grid(rows, nrow=len(starts) + 1), examples["t"].tolist()


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(run: RunFiles) -> dict | None:
    """The newest whole training checkpoint of a run, or None for a fresh run.

    ``checkpoint.pth`` is tried first, then ``checkpoint_prev.pth`` (the one before it). A
    damaged file is reported and skipped; if checkpoints exist but none is whole, training
    stops rather than silently starting from scratch.
    """
    candidates = [p for p in (run.checkpoint, run.previous_checkpoint) if p.exists()]
    problems = []
    for path in candidates:
        try:
            state = read_file(path)
            if state.get("kind") != "checkpoint":
                raise CheckpointError(f"{path} is not a training checkpoint (kind {state.get('kind')!r}).")
            if path == run.previous_checkpoint:
                logger.warning("Resuming from the previous checkpoint %s.", path)
            return state
        except CheckpointError as err:
            logger.warning("%s", err)
            problems.append(str(path))
    if problems:
        raise CheckpointError(
            f"No whole training checkpoint in {run.dir} ({', '.join(problems)} damaged). Move them away to "
            "start training afresh, or restore a backup."
        )
    return None


def save_checkpoint(run: RunFiles, state: dict) -> None:
    """Write checkpoint.pth atomically, keeping the one before as checkpoint_prev.pth. The new file
    is written whole first and the two rotated only then: a write that fails (a full disk) leaves
    both the checkpoint and the one before it as they were."""
    def rotate() -> None:
        if run.checkpoint.exists():
            os.replace(run.checkpoint, run.previous_checkpoint)

    save_torch_atomic(run.checkpoint, state, before_replace=rotate)


def step_seed(seed: int, step: int) -> int:
    """The generator seed of training step ``step`` (well mixed by numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_noise(seed: int, step: int, n_images: int, image_shape, num_timesteps: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) and noise (N, C, H, W) of one step, for the whole global batch, drawn on
    ``device`` from a generator seeded by (seed, step): every rank draws the same values."""
    generator = torch.Generator(device=device).manual_seed(step_seed(seed, step))
    t = torch.randint(0, num_timesteps, (n_images,), generator=generator, device=device)
    noise = torch.randn((n_images, *image_shape), generator=generator, device=device)
    return t, noise


def check_finite(loss: torch.Tensor, parameters, check_grads: bool, dist: Dist = Dist(),
                 flag: float = 0.0) -> float:
    """Raise NonFiniteLoss if the loss (or, unless a GradScaler handles them, a gradient) is not
    finite on any rank. One host synchronisation per step: the loss and the gradients' total
    norm are summed on the device (NaN and inf carry through a sum), summed over the ranks with
    ``flag`` (any rank's vote, e.g. out of time) and read once. Returns the summed flags."""
    total = loss.detach().float()
    if check_grads:
        grads = [p.grad for p in parameters if p.grad is not None]
        total = total + torch.nn.utils.get_total_norm(grads, foreach=True).float()
    both = dist.all_reduce_sum(torch.stack([total, torch.full((), flag, device=total.device)]))  # a fill, no copy
    total_value, flags = both.tolist()
    if not math.isfinite(total_value):
        what = "loss" if not torch.isfinite(loss).item() else "gradient"
        raise NonFiniteLoss(f"Non-finite {what}{'' if dist.world_size == 1 else ' on some rank'}")
    return flags


class StepResult(NamedTuple):
    loss: torch.Tensor  # this rank's weighted loss, on the device
    flags: float  # the ranks' summed flags (e.g. how many are out of time)


def train_step(net, model: torch.nn.Module, schedule: DDPMSchedule, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, precision: str,
               weight: float = 1.0, dist: Dist = Dist(), flag: float = 0.0) -> StepResult:
    """One optimisation step: the L2 loss of (x0, t, noise) times ``weight``, backward, the
    finite check, Adam.

    ``net`` computes the forward pass (``model`` itself, its compiled form or its DDP wrapper);
    ``model`` owns the parameters. ``weight`` is this rank's share of the global batch times
    the world size (1 on one process), so that DDP's average of the ranks' gradients is the
    gradient of the whole batch's mean loss. On a non-finite loss or gradient nothing is
    updated and NonFiniteLoss is raised (on every rank).
    """
    with autocast(precision, x0.device):
        loss = schedule.training_loss(net, x0, t, noise) * weight
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # With fp16 the GradScaler skips steps with inf/NaN gradients by design.
    flags = check_finite(loss, model.parameters(), not scaler.is_enabled(), dist, flag)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(loss, flags)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- decay_t * ema + (1 - decay_t) * model, with decay_t = min(decay, (1 + step) / (10 + step)).

    The warm-up averages over the steps taken so far early on, rather than leaving most of the
    weight on the random initialisation. One multi-tensor lerp, not one kernel per parameter.
    """
    decay_t = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay_t)


class TrainLoop:
    """The training state of one run and the loop that advances it (one per process)."""

    def __init__(self, model: torch.nn.Module, schedule: DDPMSchedule, train_images: torch.Tensor,
                 val_images: torch.Tensor, settings: TrainSettings, run_dir: Path, config: dict, device: torch.device,
                 dist: Dist = Dist(), data: dict | None = None, first_stage=None, preview_images=None):
        self.settings, self.schedule, self.run_dir, self.config, self.device, self.dist = (
            settings, schedule, run_dir, config, device, dist)
        self.data = data or {}  # each split's digest (train_config.data_record), kept in every checkpoint
        self.first_stage = first_stage  # a latent model's LatentSpace: its entry goes into every file
        self.files = RunFiles(run_dir)
        self.precision = resolve_precision(settings.precision, device)
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            net = self.model
        self.net = compile_unet(net) if settings.compile else net  # shares model's parameters
        if device.type == "cuda" and isinstance(train_images, torch.Tensor) and \
                train_images.numel() * train_images.element_size() <= MAX_DEVICE_DATA_BYTES:
            train_images = train_images.to(device)
        self.train_images, self.val_images = train_images, val_images
        self.preview_images = preview_images if preview_images is not None else val_images[:4]
        self.image_shape = [int(d) for d in train_images.shape[1:]]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.ema: torch.nn.Module | None = None
        self.steps_per_epoch = math.ceil(len(train_images) / settings.batch_size)
        # The position: epoch and batch to continue from, optimizer steps taken.
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_val, self.val_loss = math.inf, None
        self.resumed_loss_sum, self.resumed_order = 0.0, None
        self.writer = None
        self.started = time.monotonic()

    # --- state ------------------------------------------------------------------------

    @property
    def scoring_model(self) -> torch.nn.Module:
        return self.ema if self.ema is not None else self.model

    def run_settings(self) -> dict:
        return {"batch_size": self.settings.batch_size, "lr": self.optimizer.param_groups[0]["lr"],
                "seed": self.settings.seed, "precision": self.precision, "ema_decay": self.settings.ema_decay,
                "world_size": self.dist.world_size}

    def restore(self, state: dict | None, weights: dict | None = None) -> None:
        """Continue from a checkpoint (or start afresh with ``None``, from ``weights`` if given);
        makes the EMA copy after the model's weights are loaded."""
        if state is None:
            torch.manual_seed(self.settings.seed)
            if weights is not None:
                try:
                    self.model.load_state_dict(weights)
                except RuntimeError as err:
                    raise CheckpointError(f"--init_weights does not match this run's architecture ({str(err)[:200]})"
                                          "; pass a model file trained with the same config.") from None
        else:
            self.check_resume_settings(state.get("settings"))
            self.check_resume_data(state.get("data"))
            self.check_resume_first_stage(state.get("first_stage"))
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            self.epoch, self.batch_in_epoch, self.step = state["epoch"], state.get("batch_in_epoch", 0), state["step"]
            if self.batch_in_epoch:  # inside an epoch: continue with the order that epoch was using
                self.resumed_order = state["data_order"]
            self.best_val = state["best_val_loss"]
            self.resumed_loss_sum = state.get("epoch_loss_sum", 0.0) if self.dist.is_main else 0.0
            if self.settings.lr_given and self.optimizer.param_groups[0]["lr"] != self.settings.lr:
                logger.info("Learning rate %g -> %g (--lr) from step %d on.", self.optimizer.param_groups[0]["lr"],
                            self.settings.lr, self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.settings.lr
        if self.settings.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            if state is not None and state.get("ema_model") is not None:
                self.ema.load_state_dict(state["ema_model"])

    def check_resume_settings(self, stored: dict | None) -> None:
        if stored is None:
            return  # a checkpoint from an older version
        current = self.run_settings()
        changed = [f"{key} {stored[key]!r} -> {current[key]!r}" for key in FIXED_SETTINGS
                   if key in stored and stored[key] != current[key]]
        if changed:
            raise ConfigError(
                f"The run in {self.run_dir} was trained with other settings: {'; '.join(changed)}. Resume with the "
                "same --batch_size, --seed, --precision and --ema_decay (the learning rate and the number of "
                "processes may change), or start a new --model_name.")
        if stored.get("world_size", 1) != self.dist.world_size:
            logger.info("Resuming a run trained on %d process(es) on %d: the data position is global, so it "
                        "goes on where it stopped.", stored.get("world_size", 1), self.dist.world_size)

    def check_resume_data(self, stored: dict | None) -> None:
        changed = data_differences(stored, self.data)
        if changed:
            raise ConfigError(f"The run in {self.run_dir} cannot resume on other data: {'; '.join(changed)}. Resume "
                              "with the splits it was trained on, or start a new --model_name.")

    def check_resume_first_stage(self, stored: dict | None) -> None:
        """A latent run resumes on the latents of its own first stage only (and a pixel run stays one)."""
        from ddpm_ood.models.spaces import weights_digest

        current = self.first_stage
        if stored is None and current is None:
            return
        if stored is None or current is None:
            was, now = ("pixel", "latent") if stored is None else ("latent", "pixel")
            raise ConfigError(f"The run in {self.run_dir} was trained in {was} space; this command asks for {now} "
                              f"space (--vqvae_checkpoint): resume it as it was, or start a new --model_name.")
        if weights_digest(stored["model"]) != current.weights_digest() or stored.get("pad") != current.pad:
            raise ConfigError(f"The run in {self.run_dir} was trained on the latents of another first stage (or "
                              f"--latent_pad) than {current.location}: resume with the first stage it was trained "
                              "on, or start a new --model_name.")

    def record(self) -> dict:
        """How the model was trained, kept in every checkpoint and model file: every setting and the data."""
        record = {"training": {**self.settings.record(), "lr": self.optimizer.param_groups[0]["lr"],
                               "world_size": self.dist.world_size}, "data": self.data}
        if self.first_stage is not None:
            record["first_stage"] = self.first_stage.entry()
        return record

    def checkpoint_state(self, epoch: int, batch_in_epoch: int, loss_sum: float, order: torch.Tensor) -> dict:
        return {
            "kind": "checkpoint", "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "ema_model": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": self.step, "epoch_loss_sum": loss_sum,
            "data_order": order.cpu(), "best_val_loss": self.best_val, "config": self.config, "rng": rng_state(),
            "image_shape": self.image_shape, "settings": self.run_settings(), **self.record(),
        }

    def save(self, epoch: int, batch_in_epoch: int, loss_sum: torch.Tensor, order: torch.Tensor) -> None:
        """checkpoint.pth at this position; the epoch's loss sum is reduced over the ranks (a
        collective: every rank calls this at the same steps), and rank 0 writes."""
        total = self.dist.all_reduce_sum(loss_sum.detach().clone()).item()
        if self.dist.is_main:
            save_checkpoint(self.files, self.checkpoint_state(epoch, batch_in_epoch, total, order))

    def save_model(self, path: Path, epochs_done: int) -> None:
        if self.dist.is_main:
            save_model_file(path, self.scoring_model.state_dict(), self.config, epochs_done,
                            self.val_loss, self.ema is not None, self.image_shape, self.record())

    # --- the loop -----------------------------------------------------------------------

    def out_of_time(self) -> bool:
        return self.settings.max_minutes is not None and \
            (time.monotonic() - self.started) / 60 >= self.settings.max_minutes

    def run_step(self, order: torch.Tensor, index: int) -> StepResult:
        """Batch ``index`` of the epoch: this rank's slice of it, the step's noise, one update."""
        check_interrupted()
        batch = self.settings.batch_size
        batch_order = order[index * batch:(index + 1) * batch]  # the global batch (shorter at an epoch's end)
        n_rows = len(batch_order)
        share = self.dist.share(n_rows)
        t, noise = step_noise(self.settings.seed, self.step, n_rows, self.image_shape, self.schedule.num_timesteps,
                              self.device)
        if share.stop > share.start:
            rows, weight = share, (share.stop - share.start) * self.dist.world_size / n_rows
        else:  # fewer images than ranks in this batch: a zero-weight row keeps DDP's all-reduce in step
            rows, weight = slice(0, 1), 0.0
        x0 = train_batch(self.train_images, batch_order[rows], 0, n_rows, self.device, self.memory_format)
        try:
            result = train_step(self.net, self.model, self.schedule, self.optimizer, self.scaler, x0, t[rows],
                                noise[rows], self.precision, weight, self.dist, float(self.out_of_time()))
        except NonFiniteLoss as err:
            last = self.files.checkpoint
            raise NonFiniteLoss(
                f"{err} at epoch {self.epoch + 1}, step {self.step + 1}; nothing was updated or saved from it. The "
                f"last good checkpoint is {last if last.exists() else '(none yet)'}. Lower the learning rate, use "
                "--precision fp32, or check the data, then re-run to resume.") from None
        if self.ema is not None:
            update_ema(self.ema, self.model, self.settings.ema_decay, self.step)
        self.step += 1
        return result

    def run_epoch(self) -> bool:
        """Train from the current position to the end of the epoch, or until out of time (then
        checkpoint there). Returns True if the run must stop (out of time)."""
        settings, epoch = self.settings, self.epoch
        self.model.train()
        resuming = self.resumed_order is not None
        order = (self.resumed_order if resuming else epoch_order(len(self.train_images), settings.seed, epoch))
        order = order.to(self.train_images.device)
        self.resumed_order = None
        loss_sum = torch.tensor(self.resumed_loss_sum if self.batch_in_epoch else 0.0, device=self.device)
        time_up = False
        for i in tqdm(range(self.batch_in_epoch, self.steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.n_epochs}",
                      initial=self.batch_in_epoch, total=self.steps_per_epoch, leave=False, unit="step",
                      disable=not self.dist.is_main):
            result = self.run_step(order, i)
            loss_sum += result.loss.detach()
            time_up = result.flags > 0  # every rank sees the same sum, so all stop together
            if i + 1 < self.steps_per_epoch and time_up:
                # Out of time inside the epoch: checkpoint this exact position; a re-run goes on from here.
                self.save(epoch, i + 1, loss_sum, order)
                self.evaluate(epoch)
                logger.info("Stopping at epoch %d, batch %d of %d: --max_minutes=%s reached. Re-run the same "
                            "command to continue.", epoch + 1, i + 1, self.steps_per_epoch, settings.max_minutes)
                return True
            if settings.checkpoint_every_steps and self.step % settings.checkpoint_every_steps == 0 \
                    and i + 1 < self.steps_per_epoch:
                self.save(epoch, i + 1, loss_sum, order)
        train_loss = self.dist.all_reduce_sum(loss_sum).item() / self.steps_per_epoch
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        if self.writer is not None:
            self.writer.add_scalar("train/loss", train_loss, self.step)
            self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
        if self.dist.is_main:
            logger.info("epoch %d/%d: train loss %.5f", self.epoch, settings.n_epochs, train_loss)
        last_epoch = self.epoch == settings.n_epochs
        if self.epoch % settings.eval_freq == 0 or last_epoch or time_up:
            self.evaluate(self.epoch)
        if self.epoch % settings.checkpoint_every == 0 or last_epoch or time_up:
            self.save(self.epoch, 0, torch.zeros((), device=self.device), order)
        if time_up and not last_epoch:
            logger.info("Stopping after epoch %d: --max_minutes=%s reached.", self.epoch, settings.max_minutes)
        return time_up

    def evaluate(self, epochs_done: int) -> None:
        """Validation loss (over the ranks), samples to TensorBoard, best_model.pth when the loss improves."""
        self.scoring_model.eval()
        self.val_loss = validation_loss(self.scoring_model, self.schedule, self.val_images, self.settings.batch_size,
                                        self.device, self.precision, self.dist)
        if not self.dist.is_main:
            self.best_val = min(self.best_val, self.val_loss)
            return
        self.writer.add_scalar("val/loss", self.val_loss, self.step)
        logger.info("epoch %d: validation loss %.5f (best %.5f)", epochs_done, self.val_loss, self.best_val)
        if self.settings.num_sample_images:
            # The model as reconstruct.py calls it (fp32, one call per step: previews are small).
            preview = model_function(self.scoring_model, self.device, "fp32", self.settings.channels_last, max_batch=0)
            shape = (self.settings.num_sample_images, *self.image_shape)
            samples = sample_images(preview, self.schedule, shape, self.settings.sample_steps, self.device,
                                    self.settings.seed, self.first_stage)
            self.writer.add_image("samples", make_grid(mid_slices(samples.cpu()), nrow=int(math.sqrt(len(samples)))),
                                  self.step)
            grid, timesteps = reconstruction_grid(preview, self.schedule, self.preview_images,
                                                  self.settings.sample_steps, self.device, self.settings.seed,
                                                  space=self.first_stage)
            self.writer.add_image("reconstructions (input, then from t = " + ", ".join(map(str, timesteps)) + ")",
                                  grid, self.step)
        if self.val_loss < self.best_val:
            self.best_val = self.val_loss
            self.save_model(self.files.best_model, epochs_done)

    def run_loop(self) -> dict:
        """Train to --n_epochs (or --max_minutes) and write final_model.pth. Returns a summary."""
        settings = self.settings
        if self.epoch >= settings.n_epochs:
            if self.dist.is_main:
                logger.info("The run in %s is already complete (%d of --n_epochs=%d epochs); nothing to train. "
                            "Raise --n_epochs to train further.", self.run_dir, self.epoch, settings.n_epochs)
            if not self.files.final_model.exists():  # killed between the last checkpoint and this file
                self.save_model(self.files.final_model, self.epoch)
            return {"epochs": self.epoch, "steps": self.step, "best_val_loss": self.best_val, "already_complete": True}
        if self.step and self.dist.is_main:
            logger.info("Resuming at epoch %d, batch %d (step %d).", self.epoch + 1, self.batch_in_epoch, self.step)
        if self.dist.is_main:
            self.writer = SummaryWriter(log_dir=str(self.files.tensorboard), purge_step=self.step)
            described = {**self.run_settings(), "n_epochs": settings.n_epochs, "eval_freq": settings.eval_freq,
                         "compile": settings.compile, "channels_last": settings.channels_last,
                         "parameters": sum(p.numel() for p in self.model.parameters())}
            unet = self.config.get("ldm", {}).get("params", {}).get("unet_config", {}).get("params", {})
            described.update({f"unet.{k}": v for k, v in unet.items()})
            self.writer.add_text("hparams", "| setting | value |\n| --- | --- |\n" + "\n".join(
                f"| {k} | {v} |" for k, v in described.items()), self.step)
        self.started = time.monotonic()
        try:
            while self.epoch < settings.n_epochs:
                if self.run_epoch():
                    break
        finally:
            if self.writer is not None:
                self.writer.close()
        self.save_model(self.files.final_model, self.epoch)
        return {"epochs": self.epoch, "steps": self.step, "best_val_loss": self.best_val}


def train(model: torch.nn.Module, schedule: DDPMSchedule, train_images: torch.Tensor, val_images: torch.Tensor,
          settings: TrainSettings, run_dir: Path, config: dict, device: torch.device, dist: Dist = Dist(),
          init_weights: Path | None = None, data: dict | None = None, first_stage=None, preview_images=None) -> dict:
    """Train (or resume training) and write the run's files under ``run_dir``. Returns a summary.

    A run with model files but no checkpoint is never trained afresh over them (that would
    overwrite a finished model): ``init_weights`` (a model file) starts it from those weights.
    """
    loop = TrainLoop(model, schedule, train_images, val_images, settings, run_dir, config, device, dist, data,
                     first_stage, preview_images)
    if dist.is_main:
        remove_stale_temporaries(run_dir)  # left by a run that was killed mid-write
    state = load_resume_state(loop.files)
    models = [p.name for p in (loop.files.best_model, loop.files.final_model) if p.exists()]
    if state is not None and init_weights is not None:
        raise ConfigError(f"--init_weights starts a run from a model's weights, but {run_dir} has a checkpoint to "
                          "resume from: drop --init_weights to resume, or use a new --model_name.")
    if state is None and models and init_weights is None:
        raise CheckpointError(
            f"{run_dir} holds {' and '.join(models)} but no checkpoint to resume from (deleted?): training it again "
            f"would start from scratch and overwrite them. To train it further from its weights, re-run with "
            f"--init_weights={models[-1]} (a fresh optimizer; the model files are replaced as training goes on); "
            "to keep them, train a new --model_name.")
    loop.restore(state, read_file(init_weights)["model"] if init_weights is not None else None)
    return loop.run_loop()
