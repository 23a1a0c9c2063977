"""The DDPM training loop: Adam on the simple L2 loss, periodic validation, checkpoints.

Everything a resumed run needs is in ``checkpoint.pth``: the data order of epoch e is a
permutation drawn from a generator seeded by (seed, e), and a checkpoint written inside an
epoch also carries that epoch's order and the batch to continue from, so a resumed run sees
exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from src.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, CheckpointError, read_file, save_model_file
from src.diffusion import DDPMSchedule, PLMSSampler
from src.errors import NonFiniteLoss
from src.files import remove_stale_temporaries, save_torch_atomic
from src.precision import PRECISIONS, autocast, resolve_precision  # noqa: F401 (PRECISIONS re-exported)
from src.unet import compile_unet

logger = logging.getLogger(__name__)

@dataclass
class TrainSettings:
    n_epochs: int
    batch_size: int
    lr: float
    eval_freq: int = 10
    checkpoint_every: int = 1
    seed: int = 0
    ema_decay: float = 0.0  # 0 turns EMA off (the paper did not use it)
    precision: str = "auto"
    num_sample_images: int = 16
    sample_steps: int = 50
    max_minutes: float | None = None  # stop (after a checkpoint) once this much time has passed
    compile: bool = False
    channels_last: bool = False
    checkpoint_every_steps: int = 0  # also checkpoint inside an epoch every N steps; 0: epoch ends only


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
def validation_loss(model, schedule: DDPMSchedule, images: torch.Tensor, batch_size: int, device, precision: str) -> float:
    """Mean L2 loss over the validation set with fixed timesteps and noise, comparable across epochs."""
    generator = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    for start in tqdm(range(0, len(images), batch_size), desc="validation", unit="batch", leave=False):
        x0 = images[start:start + batch_size].to(device)
        t = torch.randint(0, schedule.num_timesteps, (len(x0),), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        with autocast(precision, device):
            loss = schedule.training_loss(model, x0, t, noise)
        total += loss.item() * len(x0)
        count += len(x0)
    return total / count


@torch.no_grad()
def sample_images(model, schedule: DDPMSchedule, shape, n_steps: int, device, seed: int) -> torch.Tensor:
    """Draw images from pure noise with PLMS (for TensorBoard)."""
    sampler = PLMSSampler(schedule)
    sampler.set_timesteps(n_steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    history: list[torch.Tensor] = []
    for t in tqdm(sampler.trajectory(len(sampler.grid) - 1), desc="sampling", unit="step", leave=False):
        eps = model(x, torch.full((shape[0],), t, device=device))
        x, history = sampler.step(eps, t, x, history, model)
    return x.clamp(0, 1)


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


def load_resume_state(run_dir: Path) -> dict | None:
    """The newest whole training checkpoint of a run, or None for a fresh run.

    ``checkpoint.pth`` is tried first, then ``checkpoint_prev.pth`` (the one before it). A
    damaged file is reported and skipped; if checkpoints exist but none is whole, training
    stops rather than silently starting from scratch.
    """
    candidates = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT) if p.exists()]
    problems = []
    for path in candidates:
        try:
            state = read_file(path)
            if state.get("kind") != "checkpoint":
                raise CheckpointError(f"{path} is not a training checkpoint (kind {state.get('kind')!r}).")
            if path.name == PREVIOUS_CHECKPOINT:
                logger.warning("Resuming from the previous checkpoint %s.", path)
            return state
        except CheckpointError as err:
            logger.warning("%s", err)
            problems.append(str(path))
    if problems:
        raise CheckpointError(
            f"No whole training checkpoint in {run_dir} ({', '.join(problems)} damaged). Move them away to "
            "start training afresh, or restore a backup."
        )
    return None


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write checkpoint.pth atomically, keeping the one before as checkpoint_prev.pth."""
    path = run_dir / CHECKPOINT
    if path.exists():
        os.replace(path, run_dir / PREVIOUS_CHECKPOINT)
    save_torch_atomic(path, state)


def check_finite(loss: torch.Tensor, parameters, check_grads: bool) -> None:
    """Raise NonFiniteLoss if the loss (or, unless a GradScaler handles them, a gradient) is not
    finite. One host synchronisation: the loss and the gradients' total norm are summed on the
    device (NaN and inf carry through a sum) and read once; only a failure looks closer."""
    total = loss.detach().float()
    if check_grads:
        grads = [p.grad for p in parameters if p.grad is not None]
        total = total + torch.nn.utils.get_total_norm(grads, foreach=True).float()
    if not torch.isfinite(total).item():
        what = "loss" if not torch.isfinite(loss).item() else "gradient"
        raise NonFiniteLoss(f"Non-finite {what}")


def train_step(net, model: torch.nn.Module, schedule: DDPMSchedule, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, x0: torch.Tensor, precision: str) -> torch.Tensor:
    """One optimisation step on a batch: the L2 loss at uniform t, backward, the finite check, Adam.

    ``net`` computes the forward pass (``model`` itself or its compiled form); ``model`` owns the
    parameters. Returns the loss (on the device). On a non-finite loss or gradient nothing is
    updated and NonFiniteLoss is raised.
    """
    t = torch.randint(0, schedule.num_timesteps, (len(x0),), device=x0.device)
    noise = torch.randn_like(x0)
    with autocast(precision, x0.device):
        loss = schedule.training_loss(net, x0, t, noise)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    # With fp16 the GradScaler skips steps with inf/NaN gradients by design.
    check_finite(loss, model.parameters(), check_grads=not scaler.is_enabled())
    scaler.step(optimizer)
    scaler.update()
    return loss


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- decay_t * ema + (1 - decay_t) * model, with decay_t = min(decay, (1 + step) / (10 + step)).

    The warm-up averages over the steps taken so far early on, rather than leaving most of the
    weight on the random initialisation. One multi-tensor lerp, not one kernel per parameter.
    """
    decay_t = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay_t)


def train(model: torch.nn.Module, schedule: DDPMSchedule, train_images: torch.Tensor, val_images: torch.Tensor,
          settings: TrainSettings, run_dir: Path, config: dict, device: torch.device) -> dict:
    """Train (or resume training) and write the run's files under ``run_dir``. Returns a summary."""
    precision = resolve_precision(settings.precision, device)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    net = compile_unet(model) if settings.compile else model  # shares model's parameters
    if device.type == "cuda" and train_images.numel() * train_images.element_size() <= MAX_DEVICE_DATA_BYTES:
        train_images = train_images.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    ema = copy.deepcopy(model).requires_grad_(False) if settings.ema_decay > 0 else None
    n_train = len(train_images)
    steps_per_epoch = math.ceil(n_train / settings.batch_size)

    start_epoch, start_batch, step, best_val, resumed_loss_sum = 0, 0, 0, math.inf, 0.0
    resumed_order = None
    remove_stale_temporaries(run_dir)  # left by a run that was killed mid-write
    state = load_resume_state(run_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema_model") is not None:
            ema.load_state_dict(state["ema_model"])
        set_rng_state(state["rng"])
        start_epoch, start_batch, step = state["epoch"], state.get("batch_in_epoch", 0), state["step"]
        if start_batch:  # inside an epoch: continue with the order that epoch was using
            resumed_order = state["data_order"]
        best_val, resumed_loss_sum = state["best_val_loss"], state.get("epoch_loss_sum", 0.0)
    else:
        torch.manual_seed(settings.seed)

    def checkpoint_state(epoch: int, batch_in_epoch: int, loss_sum: float, order: torch.Tensor) -> dict:
        return {
            "kind": "checkpoint", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "ema_model": ema.state_dict() if ema is not None else None,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step, "epoch_loss_sum": loss_sum,
            "data_order": order.cpu(), "best_val_loss": best_val, "config": config, "rng": rng_state(),
            "image_shape": [int(d) for d in train_images.shape[1:]],
        }

    image_shape = [int(d) for d in train_images.shape[1:]]
    scoring_model = ema if ema is not None else model

    def save_final(epochs_done: int, val_loss: float | None) -> None:
        save_model_file(run_dir / "final_model.pth", scoring_model.state_dict(), config, epochs_done, val_loss,
                        ema is not None, image_shape)

    if state is not None and start_epoch >= settings.n_epochs:
        logger.info("The run in %s is already complete (%d of --n_epochs=%d epochs); nothing to train. Raise "
                    "--n_epochs to train further.", run_dir, start_epoch, settings.n_epochs)
        if not (run_dir / "final_model.pth").exists():  # killed between the last checkpoint and this file
            save_final(start_epoch, None)
        return {"epochs": start_epoch, "steps": step, "best_val_loss": best_val, "already_complete": True}
    if state is not None:
        logger.info("Resuming at epoch %d, batch %d (step %d).", start_epoch + 1, start_batch, step)

    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=step)
    started = time.monotonic()
    out_of_time = lambda: settings.max_minutes is not None and (time.monotonic() - started) / 60 >= settings.max_minutes
    val_loss = None

    def evaluate(epochs_done: int) -> None:
        """Validation loss, samples to TensorBoard, and best_model.pth when the loss improves."""
        nonlocal best_val, val_loss
        scoring_model.eval()
        val_loss = validation_loss(scoring_model, schedule, val_images, settings.batch_size, device, precision)
        writer.add_scalar("val/loss", val_loss, step)
        logger.info("epoch %d: validation loss %.5f (best %.5f)", epochs_done, val_loss, best_val)
        if settings.num_sample_images:
            shape = (settings.num_sample_images, *train_images.shape[1:])
            samples = sample_images(scoring_model, schedule, shape, settings.sample_steps, device, settings.seed)
            writer.add_image("samples", make_grid(samples.cpu(), nrow=int(math.sqrt(len(samples)))), step)
        if val_loss < best_val:
            best_val = val_loss
            save_model_file(run_dir / "best_model.pth", scoring_model.state_dict(), config, epochs_done, val_loss,
                            ema is not None, image_shape)

    completed = start_epoch
    for epoch in range(start_epoch, settings.n_epochs):
        model.train()
        resuming = epoch == start_epoch and resumed_order is not None
        order = (resumed_order if resuming else epoch_order(n_train, settings.seed, epoch)).to(train_images.device)
        first = start_batch if epoch == start_epoch else 0
        loss_sum = torch.tensor(resumed_loss_sum if epoch == start_epoch else 0.0, device=device)
        stopped_at = None  # the batch to continue from, when --max_minutes ends the run inside this epoch
        for i in tqdm(range(first, steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.n_epochs}",
                      initial=first, total=steps_per_epoch, leave=False, unit="step"):
            x0 = train_batch(train_images, order, i, settings.batch_size, device, memory_format)
            try:
                loss = train_step(net, model, schedule, optimizer, scaler, x0, precision)
            except NonFiniteLoss as err:
                last = run_dir / CHECKPOINT
                raise NonFiniteLoss(
                    f"{err} at epoch {epoch + 1}, step {step + 1}; nothing was updated or saved from it. The last "
                    f"good checkpoint is {last if last.exists() else '(none yet)'}. Lower the learning rate, use "
                    "--precision fp32, or check the data, then re-run to resume.") from None
            if ema is not None:
                update_ema(ema, model, settings.ema_decay, step)
            loss_sum += loss.detach()
            step += 1
            if i + 1 < steps_per_epoch and out_of_time():
                stopped_at = i + 1
                break
            if settings.checkpoint_every_steps and step % settings.checkpoint_every_steps == 0 \
                    and i + 1 < steps_per_epoch:
                save_checkpoint(run_dir, checkpoint_state(epoch, i + 1, loss_sum.item(), order))
        if stopped_at is not None:
            # Out of time inside the epoch: checkpoint this exact position, so a re-run goes on from here.
            save_checkpoint(run_dir, checkpoint_state(epoch, stopped_at, loss_sum.item(), order))
            evaluate(epoch)
            logger.info("Stopping at epoch %d, batch %d of %d: --max_minutes=%s reached. Re-run the same command "
                        "to continue.", epoch + 1, stopped_at, steps_per_epoch, settings.max_minutes)
            break
        train_loss = loss_sum.item() / steps_per_epoch
        writer.add_scalar("train/loss", train_loss, step)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        logger.info("epoch %d/%d: train loss %.5f", epoch + 1, settings.n_epochs, train_loss)
        completed = epoch + 1

        last_epoch = completed == settings.n_epochs
        time_up = out_of_time()
        if completed % settings.eval_freq == 0 or last_epoch or time_up:
            evaluate(completed)
        if completed % settings.checkpoint_every == 0 or last_epoch or time_up:
            save_checkpoint(run_dir, checkpoint_state(completed, 0, 0.0, order))
        if time_up and not last_epoch:
            logger.info("Stopping after epoch %d: --max_minutes=%s reached.", completed, settings.max_minutes)
            break
    writer.close()
    save_final(completed, val_loss)
    return {"epochs": completed, "steps": step, "best_val_loss": best_val}
