"""The DDPM's training: Adam on the simple L2 loss, periodic validation, checkpoints; on one
process or, under torchrun, on several with DistributedDataParallel.

:class:`TrainLoop` is the DDPM's part of a :class:`~ddpm_ood.training.loop.TrainingRun` (which
owns the position, checkpoints, resuming, the time budget and the epoch loop, shared with the
first stage's trainer): the model, optimizer, GradScaler and EMA, one optimisation step
(:meth:`TrainLoop.run_step`) and validation with previews (:meth:`TrainLoop.validate`).

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
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid
from tqdm import tqdm

from ddpm_ood.data.loading import mid_slices
from ddpm_ood.diffusion.ddpm import DDPMSchedule, PLMSSampler
from ddpm_ood.models.loading import model_function
from ddpm_ood.models.model_file import CheckpointError, read_model_file, save_model_file
from ddpm_ood.models.spaces import as_eps
from ddpm_ood.models.unet import compile_unet
from ddpm_ood.training.loop import (StepResult, TrainingRun, check_finite, check_resume_preprocessing,
                                    fixed_setting_changes)
from ddpm_ood.training.settings import FIXED_SETTINGS, TrainSettings, data_differences
from ddpm_ood.utils.distributed import Dist
from ddpm_ood.utils.errors import ConfigError
from ddpm_ood.utils.runtime import autocast, memory_format, resolve_precision, to_channels_last

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
        noise = schedule.sample_noise(x0.shape, t, generator)
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
    last = torch.full((shape[0],), schedule.num_timesteps - 1)
    x = schedule.sample_noise(shape, last, torch.Generator().manual_seed(seed)).to(device)
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


def step_seed(seed: int, step: int) -> int:
    """The generator seed of training step ``step`` (well mixed by numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_noise(seed: int, step: int, n_images: int, image_shape, num_timesteps: int,
               device: torch.device, kind=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (N,) and noise (N, C, H, W) of one step, for the whole global batch, drawn on
    ``device`` from a generator seeded by (seed, step): every rank draws the same values. ``kind``: a
    schedule's ``noise`` (simplex noise), or None for Gaussian."""
    generator = torch.Generator(device=device).manual_seed(step_seed(seed, step))
    t = torch.randint(0, num_timesteps, (n_images,), generator=generator, device=device)
    if kind is None:
        noise = torch.randn((n_images, *image_shape), generator=generator, device=device)
    else:
        noise = kind.sample((n_images, *image_shape), t, generator, device)
    return t, noise


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
    return StepResult({"loss": loss}, flags)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- decay_t * ema + (1 - decay_t) * model, with decay_t = min(decay, (1 + step) / (10 + step)).

    The warm-up averages over the steps taken so far early on, rather than leaving most of the
    weight on the random initialisation. One multi-tensor lerp, not one kernel per parameter.
    """
    decay_t = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay_t)


def check_resume_space(run_dir: Path, stored: dict | None, latent: bool) -> None:
    """A run resumes in the space it was trained in: ``stored`` is its files' ``first_stage`` entry (None: pixel
    space), ``latent`` whether this command gives --vqvae_checkpoint. Refused naming the first stage to give."""
    if (stored is not None) == latent:
        return
    if stored is not None:
        raise ConfigError(f"The run in {run_dir} is a latent model, trained on the latents of the first stage "
                          f"{stored.get('file', '(not recorded)')}; resume it with --vqvae_checkpoint "
                          f"{stored.get('file', 'THAT_RUN')} as it was started, or start a new --model_name.")
    raise ConfigError(f"The run in {run_dir} was trained in pixel space; this command asks for latent space "
                      "(--vqvae_checkpoint): resume it without --vqvae_checkpoint, or start a new --model_name.")


class TrainLoop(TrainingRun):
    """The DDPM's training state (model, optimizer, GradScaler, EMA) on the shared run machinery (one per process)."""

    checkpoint_kind = "checkpoint"

    def __init__(self, model: torch.nn.Module, schedule: DDPMSchedule, train_images: torch.Tensor,
                 val_images: torch.Tensor, settings: TrainSettings, run_dir: Path, config: dict, device: torch.device,
                 dist: Dist = Dist(), data: dict | None = None, first_stage=None, preview_images=None,
                 preprocessing: dict | None = None):
        super().__init__(settings, run_dir, len(train_images), device, dist)
        self.preprocessing = preprocessing  # how volumes were cropped and resized (data.loading.preprocessing_record)
        from ddpm_ood.models.config import b_scale
        from ddpm_ood.models.spaces import IMAGE_RANGE, PixelSpace

        self.schedule, self.config = schedule, config
        scale = b_scale(config) if config else 1.0
        # Where previews are decoded from: the first stage's latents, or the images times b_scale.
        self.space = first_stage if first_stage is not None else IMAGE_RANGE if scale == 1.0 else PixelSpace(0.0, scale)
        self.data = data or {}  # each split's digest (training.settings.data_record), kept in every checkpoint
        self.first_stage = first_stage  # a latent model's LatentSpace: its entry goes into every file
        self.precision = resolve_precision(settings.precision, device)
        self.memory_format = memory_format(settings.channels_last, len(train_images.shape))
        self.model = model.to(device)
        if settings.channels_last:
            to_channels_last(self.model)
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

    # --- state ------------------------------------------------------------------------

    @property
    def scoring_model(self) -> torch.nn.Module:
        return self.ema if self.ema is not None else self.model

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run_settings(self) -> dict:
        return {"batch_size": self.settings.batch_size, "lr": self.learning_rate(),
                "seed": self.settings.seed, "precision": self.precision, "ema_decay": self.settings.ema_decay,
                "world_size": self.dist.world_size}

    def start(self, state: dict | None, weights: dict | None = None) -> None:
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
            self.restore(state)
            if self.settings.lr_given and self.learning_rate() != self.settings.lr:
                logger.info("Learning rate %g -> %g (--lr) from step %d on.", self.learning_rate(),
                            self.settings.lr, self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.settings.lr
        if self.settings.ema_decay > 0:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
            if state is not None and state.get("ema_model") is not None:
                self.ema.load_state_dict(state["ema_model"])

    def check_resume(self, state: dict) -> None:
        self.check_resume_settings(state.get("settings"))
        check_resume_preprocessing(self.run_dir, state, self.preprocessing)
        self.check_resume_data(state.get("data"))
        self.check_resume_first_stage(state.get("first_stage"))

    def check_resume_settings(self, stored: dict | None) -> None:
        changed = fixed_setting_changes(stored, self.run_settings(), FIXED_SETTINGS)
        if changed:
            raise ConfigError(
                f"The run in {self.run_dir} was trained with other settings: {'; '.join(changed)}. Resume with the "
                "same --batch_size, --seed, --precision and --ema_decay (the learning rate and the number of "
                "processes may change), or start a new --model_name.")
        if stored is not None and stored.get("world_size", 1) != self.dist.world_size:
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
        check_resume_space(self.run_dir, stored, current is not None)
        if stored is None:
            return
        if weights_digest(stored["model"]) != current.weights_digest() or stored.get("pad") != current.pad:
            raise ConfigError(f"The run in {self.run_dir} was trained on the latents of another first stage (or "
                              f"--latent_pad) than {current.location}: resume with the first stage it was trained "
                              "on, or start a new --model_name.")

    def record(self) -> dict:
        """How the model was trained, kept in every checkpoint and model file: every setting and the data."""
        record = {"training": {**self.settings.record(), "lr": self.learning_rate(),
                               "world_size": self.dist.world_size}, "data": self.data}
        if self.first_stage is not None:
            record["first_stage"] = self.first_stage.entry()
        if self.preprocessing is not None:
            record["preprocessing"] = self.preprocessing
        return record

    def training_state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "ema_model": self.ema.state_dict() if self.ema is not None else None, "config": self.config,
                "image_shape": self.image_shape, "settings": self.run_settings(), **self.record()}

    def load_training_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def write_model(self, path: Path, epochs_done: int) -> None:
        if self.dist.is_main:
            save_model_file(path, self.scoring_model.state_dict(), self.config, epochs_done,
                            self.val_loss, self.ema is not None, self.image_shape, self.record())

    def describe(self) -> dict:
        settings = self.settings
        described = {**self.run_settings(), "n_epochs": settings.n_epochs, "eval_freq": settings.eval_freq,
                     "compile": settings.compile, "channels_last": settings.channels_last,
                     "parameters": sum(p.numel() for p in self.model.parameters())}
        unet = self.config.get("ldm", {}).get("params", {}).get("unet_config", {}).get("params", {})
        described.update({f"unet.{k}": v for k, v in unet.items()})
        return described

    # --- one step, validation -------------------------------------------------------------

    def order_device(self) -> torch.device:
        return self.train_images.device

    def begin_epoch(self) -> None:
        self.model.train()

    def run_step(self, batch_order: torch.Tensor, flag: float) -> StepResult:
        """One global batch (``batch_order``, shorter at an epoch's end): this rank's slice of it, the
        step's noise, one update."""
        n_rows = len(batch_order)
        share = self.dist.share(n_rows)
        t, noise = step_noise(self.settings.seed, self.step, n_rows, self.image_shape, self.schedule.num_timesteps,
                              self.device, self.schedule.noise)
        if share.stop > share.start:
            rows, weight = share, (share.stop - share.start) * self.dist.world_size / n_rows
        else:  # fewer images than ranks in this batch: a zero-weight row keeps DDP's all-reduce in step
            rows, weight = slice(0, 1), 0.0
        x0 = train_batch(self.train_images, batch_order[rows], 0, n_rows, self.device, self.memory_format)
        result = train_step(self.net, self.model, self.schedule, self.optimizer, self.scaler, x0, t[rows],
                            noise[rows], self.precision, weight, self.dist, flag)
        if self.ema is not None:
            update_ema(self.ema, self.model, self.settings.ema_decay, self.step)
        return result

    def validate(self, epochs_done: int) -> float:
        """Validation loss (over the ranks); samples and reconstructions to TensorBoard."""
        self.scoring_model.eval()
        val_loss = validation_loss(self.scoring_model, self.schedule, self.val_images, self.settings.batch_size,
                                   self.device, self.precision, self.dist)
        if not self.dist.is_main:
            return val_loss
        self.writer.add_scalar("val/loss", val_loss, self.step)
        if self.settings.num_sample_images:
            # The model as reconstruct.py calls it (fp32, one call per step: previews are small).
            eps = as_eps(self.scoring_model, self.schedule, self.schedule.prediction, self.image_shape[0])
            preview = model_function(eps, self.device, "fp32", self.settings.channels_last, max_batch=0)
            shape = (self.settings.num_sample_images, *self.image_shape)
            samples = sample_images(preview, self.schedule, shape, self.settings.sample_steps, self.device,
                                    self.settings.seed, self.space)
            self.writer.add_image("samples", make_grid(mid_slices(samples.cpu()), nrow=int(math.sqrt(len(samples)))),
                                  self.step)
            grid, timesteps = reconstruction_grid(preview, self.schedule, self.preview_images,
                                                  self.settings.sample_steps, self.device, self.settings.seed,
                                                  space=self.space)
            self.writer.add_image("reconstructions (input, then from t = " + ", ".join(map(str, timesteps)) + ")",
                                  grid, self.step)
        return val_loss


def train(model: torch.nn.Module, schedule: DDPMSchedule, train_images: torch.Tensor, val_images: torch.Tensor,
          settings: TrainSettings, run_dir: Path, config: dict, device: torch.device, dist: Dist = Dist(),
          init_weights: Path | None = None, data: dict | None = None, first_stage=None, preview_images=None,
          preprocessing: dict | None = None) -> dict:
    """Train (or resume training) and write the run's files under ``run_dir``. Returns a summary.

    A run with model files but no checkpoint is never trained afresh over them (that would
    overwrite a finished model): ``init_weights`` (a model file) starts it from those weights.
    """
    loop = TrainLoop(model, schedule, train_images, val_images, settings, run_dir, config, device, dist, data,
                     first_stage, preview_images, preprocessing)
    state = loop.read_resume_state()
    models = loop.model_files()
    if state is not None and init_weights is not None:
        raise ConfigError(f"--init_weights starts a run from a model's weights, but {run_dir} has a checkpoint to "
                          "resume from: drop --init_weights to resume, or use a new --model_name.")
    if state is None and models and init_weights is None:
        raise CheckpointError(
            f"{run_dir} holds {' and '.join(models)} but no checkpoint to resume from (deleted?): training it again "
            f"would start from scratch and overwrite them. To train it further from its weights, re-run with "
            f"--init_weights={models[-1]} (a fresh optimizer; the model files are replaced as training goes on); "
            "to keep them, train a new --model_name.")
    loop.start(state, read_model_file(init_weights)["model"] if init_weights is not None else None)
    return loop.run_loop()
