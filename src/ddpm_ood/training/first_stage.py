"""Training a first stage (``train_vqvae.py``): MONAI's VQVAE or AutoencoderKL on in-distribution
images, with MONAI's losses, as ddpm-ood trains its VQ-VAE.

The generator loss is L1 + the quantisation loss (a VQ-VAE; an AutoencoderKL's KL term instead)
+ ``perceptual_weight`` x LPIPS (ours, with the real AlexNet; on volumes the mean over the slices
along the three axes, MONAI's "fake 3D") + ``spectral_weight`` x MONAI's ``JukeboxLoss`` +
``adversarial_weight`` x a least-squares patch-adversarial loss against MONAI's
``PatchDiscriminator`` (ramped up linearly over ``adversarial_warmup`` epochs). The model with the
lowest validation L1 is ``best_model.pth``.

Run conventions as train.py: ``checkpoint.pth`` written atomically every epoch (and where
``--max_minutes`` stops it, mid-epoch), re-running the command resumes, a resumed run refuses other
settings or other data, TensorBoard gets the losses and reconstructions (mid-slices of volumes).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ddpm_ood.data.loading import mid_slices
from ddpm_ood.utils.errors import CheckpointError, ConfigError, NonFiniteLoss
from ddpm_ood.utils.files import remove_stale_temporaries, save_torch_atomic
from ddpm_ood.models.first_stage import FIRST_STAGE_KIND, build_autoencoder, encode_raw, decode_raw
from ddpm_ood.runs.layout import RunFiles
from ddpm_ood.utils.runtime import check_interrupted

logger = logging.getLogger(__name__)


@dataclass
class AutoencoderSettings:
    """Every setting of a first stage's training (kept in its checkpoints and model files)."""

    n_epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    lr_d: float = 5e-4
    seed: int = 0
    eval_freq: int = 1
    perceptual_weight: float = 0.001
    spectral_weight: float = 1.0
    adversarial_weight: float = 0.01
    adversarial_warmup: int = 0
    kl_weight: float = 1e-6
    max_minutes: float | None = None

    # A resumed run keeps these (the others may change: more epochs, more time).
    FIXED = ("batch_size", "seed", "perceptual_weight", "spectral_weight", "adversarial_weight", "kl_weight")

    def record(self) -> dict:
        return asdict(self)


def vqvae_network(spatial_dims: int, channels: int, num_channels, num_res_channels, num_res_layers: int,
                  downsample, upsample, num_embeddings: int, embedding_dim: int, commitment_cost: float,
                  decay: float) -> dict:
    """MONAI VQVAE's constructor arguments, as ddpm-ood's flags give them."""
    num_channels = list(num_channels)
    if len(num_res_channels) != len(num_channels):
        raise ConfigError(f"--vqvae_num_res_channels {list(num_res_channels)} needs one entry per level of "
                          f"--vqvae_num_channels {num_channels}.")
    levels = len(num_channels)
    downsample = [list(p) for p in (downsample or [[2, 4, 1, 1]] * levels)]
    upsample = [list(p) for p in (upsample or [[2, 4, 1, 1, 0]] * levels)]
    if len(downsample) != levels or len(upsample) != levels:
        raise ConfigError(f"--vqvae_downsample_parameters and --vqvae_upsample_parameters need {levels} entries, one "
                          "per level of --vqvae_num_channels.")
    return {"spatial_dims": spatial_dims, "in_channels": channels, "out_channels": channels,
            "channels": num_channels, "num_res_channels": list(num_res_channels), "num_res_layers": num_res_layers,
            "downsample_parameters": downsample, "upsample_parameters": upsample,
            "num_embeddings": num_embeddings, "embedding_dim": embedding_dim, "commitment_cost": commitment_cost,
            "decay": decay}


def autoencoderkl_network(spatial_dims: int, channels: int, num_channels, latent_channels: int,
                          num_res_layers: int) -> dict:
    """MONAI AutoencoderKL's constructor arguments (no attention: small first stages for small images)."""
    num_channels = list(num_channels)
    groups = math.gcd(*num_channels) if len(num_channels) > 1 else num_channels[0]
    return {"spatial_dims": spatial_dims, "in_channels": channels, "out_channels": channels,
            "channels": num_channels, "latent_channels": latent_channels, "num_res_blocks": num_res_layers,
            "attention_levels": [False] * len(num_channels), "norm_num_groups": min(32, groups),
            "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}


class AutoencoderTrainer:
    """One first stage's training state and loop (one process)."""

    def __init__(self, kind: str, network: dict, train_images, val_images, settings: AutoencoderSettings,
                 run_dir: Path, device: torch.device, data: dict, perceptual=None):
        from monai.losses import JukeboxLoss, PatchAdversarialLoss
        from monai.networks.nets import PatchDiscriminator

        self.kind, self.network, self.settings, self.device, self.data = kind, network, settings, device, data
        self.files = RunFiles(run_dir)
        self.train_images, self.val_images = train_images, val_images
        self.image_shape = [int(d) for d in train_images.shape[1:]]
        torch.manual_seed(settings.seed)
        self.model = build_autoencoder(kind, network).to(device)
        spatial = network["spatial_dims"]
        self.discriminator = PatchDiscriminator(spatial_dims=spatial, num_layers_d=2, channels=32,
                                                in_channels=network["in_channels"], out_channels=1).to(device)
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self.spectral = JukeboxLoss(spatial_dims=spatial) if settings.spectral_weight else None
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        self.optimizer_g = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=settings.lr_d)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_val, self.val_loss = math.inf, None
        self.resumed_order = None
        self.started = time.monotonic()
        self.writer = None

    # --- state ---------------------------------------------------------------------------------

    def record(self) -> dict:
        return {"autoencoder": self.kind, "network": self.network, "image_shape": self.image_shape,
                "training": self.settings.record(), "data": self.data}

    def model_file(self, epochs_done: int) -> dict:
        return {"kind": FIRST_STAGE_KIND, "model": self.model.state_dict(), "epoch": epochs_done,
                "val_loss": self.val_loss, "config": {}, **self.record()}

    def save_checkpoint(self, order: torch.Tensor) -> None:
        save_torch_atomic(self.files.checkpoint, {
            "kind": "first_stage_checkpoint", "model": self.model.state_dict(),
            "discriminator": self.discriminator.state_dict(), "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(), "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "step": self.step, "data_order": order.cpu(), "best_val_loss": self.best_val, "config": {},
            "rng": torch.get_rng_state(), **self.record()})

    def restore(self) -> None:
        """Resume from checkpoint.pth when there is one, refusing another network, settings or data."""
        from ddpm_ood.models.model_file import read_file
        from ddpm_ood.training.settings import data_differences

        remove_stale_temporaries(self.files.dir)
        if not self.files.checkpoint.exists():
            done = [p.name for p in (self.files.best_model, self.files.final_model) if p.exists()]
            if done:
                raise CheckpointError(f"{self.files.dir} holds {' and '.join(done)} but no checkpoint.pth to resume "
                                      "from: training again would overwrite them; use a new --model_name.")
            return
        state = read_file(self.files.checkpoint)
        if state.get("kind") != "first_stage_checkpoint":
            raise CheckpointError(f"{self.files.checkpoint} is not a checkpoint of train_vqvae.py (a train.py run?); "
                                  "use a new --model_name for the first stage.")
        problems = []
        if (state["autoencoder"], state["network"]) != (self.kind, self.network):
            problems.append("the network (--autoencoder and the --vqvae_* flags)")
        stored = state["training"]
        problems += [f"--{k} {stored[k]} -> {getattr(self.settings, k)}" for k in AutoencoderSettings.FIXED
                     if stored.get(k) != getattr(self.settings, k)]
        problems += data_differences(state.get("data"), self.data)
        if problems:
            raise ConfigError(f"The first stage in {self.files.dir} was trained otherwise: {'; '.join(problems)}. "
                              "Resume with the same flags and data, or start a new --model_name.")
        self.model.load_state_dict(state["model"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best_val = state["best_val_loss"]
        self.resumed_order = state["data_order"] if self.batch_in_epoch else None
        torch.set_rng_state(state["rng"])
        logger.info("Resuming the first stage at epoch %d, batch %d (step %d).", self.epoch + 1, self.batch_in_epoch,
                    self.step)

    # --- losses --------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and the regulariser (quantisation loss, or weighted KL)."""
        if self.kind == "vqvae":
            return self.model(images)
        recon, mu, sigma = self.model(images)
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1).mean()
        return recon, self.settings.kl_weight * kl

    def adversarial_weight(self) -> float:
        warmup = self.settings.adversarial_warmup
        weight = self.settings.adversarial_weight
        return weight * min(self.epoch, warmup) / warmup if warmup else weight

    def generator_losses(self, images: torch.Tensor, recon: torch.Tensor, regulariser: torch.Tensor) -> dict:
        losses = {"l1": F.l1_loss(recon.float(), images.float()), "regulariser": regulariser}
        if self.perceptual is not None and self.settings.perceptual_weight:
            losses["perceptual"] = self.perceptual.distance(images, recon.clamp(0, 1)).mean()
        if self.spectral is not None:
            losses["spectral"] = self.spectral(recon.float(), images.float())
        if self.settings.adversarial_weight:
            logits = self.discriminator(recon.contiguous().float())[-1]
            losses["adversarial"] = self.adversarial(logits, target_is_real=True, for_discriminator=False)
        weights = {"perceptual": self.settings.perceptual_weight, "spectral": self.settings.spectral_weight,
                   "adversarial": self.adversarial_weight()}
        losses["generator"] = sum(value * weights.get(name, 1.0) for name, value in losses.items())
        return losses

    def run_step(self, images: torch.Tensor) -> dict:
        check_interrupted()
        self.model.train()
        recon, regulariser = self.forward(images)
        losses = self.generator_losses(images, recon, regulariser)
        if not torch.isfinite(losses["generator"]):
            raise NonFiniteLoss(f"Non-finite first-stage loss at epoch {self.epoch + 1}, step {self.step + 1}; nothing "
                                "was updated. Lower --lr, or check the data, then re-run to resume.")
        self.optimizer_g.zero_grad(set_to_none=True)
        losses["generator"].backward()
        self.optimizer_g.step()
        if self.settings.adversarial_weight:
            self.optimizer_d.zero_grad(set_to_none=True)
            fake = self.discriminator(recon.detach().contiguous())[-1]
            real = self.discriminator(images.contiguous())[-1]
            loss_d = 0.5 * (self.adversarial(fake, target_is_real=False, for_discriminator=True) +
                            self.adversarial(real, target_is_real=True, for_discriminator=True))
            (self.adversarial_weight() * loss_d).backward()
            self.optimizer_d.step()
            losses["discriminator"] = loss_d
        self.step += 1
        return {name: float(value.detach()) for name, value in losses.items()}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean L1 between the validation images and their reconstructions, as the scorer decodes them."""
        self.model.eval()
        total = 0.0
        for first in range(0, len(self.val_images), self.settings.batch_size):
            images = self.val_images[first:first + self.settings.batch_size].to(self.device)
            recon = decode_raw(self.model, self.kind, encode_raw(self.model, self.kind, images))
            total += float(F.l1_loss(recon, images, reduction="sum")) / images[0].numel()
        return total / len(self.val_images)

    # --- the loop ------------------------------------------------------------------------------

    def out_of_time(self) -> bool:
        return self.settings.max_minutes is not None and (time.monotonic() - self.started) / 60 >= \
            self.settings.max_minutes

    def evaluate(self, epochs_done: int) -> None:
        from torchvision.utils import make_grid

        self.val_loss = self.validate()
        logger.info("first stage, epoch %d: validation L1 %.5f (best %.5f)", epochs_done, self.val_loss,
                    min(self.best_val, self.val_loss))
        self.writer.add_scalar("val/l1", self.val_loss, self.step)
        images = self.val_images[:8].to(self.device)
        with torch.no_grad():
            recon = decode_raw(self.model, self.kind, encode_raw(self.model, self.kind, images)).clamp(0, 1)
        grid = torch.cat([mid_slices(images), mid_slices(recon)]).cpu()
        self.writer.add_image("reconstructions (inputs, then their reconstructions)",
                              make_grid(grid, nrow=len(images)), self.step)
        if self.val_loss < self.best_val:
            self.best_val = self.val_loss
            save_torch_atomic(self.files.best_model, self.model_file(epochs_done))

    def run(self) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        settings = self.settings
        self.restore()
        if self.epoch >= settings.n_epochs:
            logger.info("The first stage in %s is already trained (%d epochs).", self.files.dir, self.epoch)
            if not self.files.final_model.exists():
                save_torch_atomic(self.files.final_model, self.model_file(self.epoch))
            return {"epochs": self.epoch, "steps": self.step, "best_val_loss": self.best_val}
        self.writer = SummaryWriter(log_dir=str(self.files.tensorboard), purge_step=self.step)
        steps_per_epoch = math.ceil(len(self.train_images) / settings.batch_size)
        self.started = time.monotonic()
        try:
            while self.epoch < settings.n_epochs:
                order = self.resumed_order if self.resumed_order is not None else \
                    torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(
                        settings.seed * 100_003 + self.epoch))
                self.resumed_order = None
                sums: dict[str, float] = {}
                done = 0
                bar = tqdm(range(self.batch_in_epoch, steps_per_epoch), desc=f"first stage, epoch {self.epoch + 1}/"
                           f"{settings.n_epochs}", initial=self.batch_in_epoch, total=steps_per_epoch, leave=False)
                for i in bar:
                    rows = order[i * settings.batch_size:(i + 1) * settings.batch_size]
                    losses = self.run_step(self.train_images[rows].to(self.device))
                    for name, value in losses.items():
                        sums[name] = sums.get(name, 0.0) + value
                    done += 1
                    self.batch_in_epoch = i + 1
                    if self.out_of_time() and i + 1 < steps_per_epoch:
                        break
                if self.batch_in_epoch < steps_per_epoch:  # out of time inside the epoch: a checkpoint right here
                    self.save_checkpoint(order)
                    logger.info("Stopping the first stage at epoch %d, batch %d: --max_minutes=%s reached. Re-run "
                                "the same command to continue.", self.epoch + 1, self.batch_in_epoch,
                                settings.max_minutes)
                    self.evaluate(self.epoch)
                    break
                n = max(1, done)
                for name, value in sums.items():
                    self.writer.add_scalar(f"train/{name}", value / n, self.step)
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                logger.info("first stage, epoch %d/%d: %s", self.epoch, settings.n_epochs,
                            ", ".join(f"{k} {v / n:.4f}" for k, v in sums.items()))
                if self.epoch % settings.eval_freq == 0 or self.epoch == settings.n_epochs or self.out_of_time():
                    self.evaluate(self.epoch)
                self.save_checkpoint(order)
                if self.out_of_time():
                    logger.info("Stopping the first stage after epoch %d: --max_minutes=%s reached.", self.epoch,
                                settings.max_minutes)
                    break
        finally:
            self.writer.close()
        if self.val_loss is None:
            self.evaluate(self.epoch)
        save_torch_atomic(self.files.final_model, self.model_file(self.epoch))  # as train.py: also when stopped
        return {"epochs": self.epoch, "steps": self.step, "best_val_loss": self.best_val}


def latent_scale(latents: torch.Tensor) -> float:
    """1 / the standard deviation of the training latents (latent diffusion's scale factor)."""
    std = float(latents.double().std())
    if not np.isfinite(std) or std == 0:
        raise ConfigError("The first stage encodes every training image to the same latent (standard deviation 0); "
                          "it is not trained: train it longer (train_vqvae.py).")
    return 1.0 / std
