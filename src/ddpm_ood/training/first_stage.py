"""Training a first stage (``train_vqvae.py``): MONAI's VQVAE or AutoencoderKL on in-distribution
images, with MONAI's losses, as ddpm-ood trains its VQ-VAE.

The generator loss is L1 + the quantisation loss (a VQ-VAE; an AutoencoderKL's KL term instead)
+ ``perceptual_weight`` x LPIPS (ours, with the real AlexNet; on volumes the mean over the slices
along the three axes, MONAI's "fake 3D") + ``spectral_weight`` x MONAI's ``JukeboxLoss`` +
``adversarial_weight`` x a least-squares patch-adversarial loss against MONAI's
``PatchDiscriminator`` (ramped up linearly over ``adversarial_warmup`` epochs). The model with the
lowest validation L1 is ``best_model.pth``.

The run machinery is train.py's own (:class:`~ddpm_ood.training.loop.TrainingRun`): ``checkpoint.pth``
written atomically every epoch (and every ``--checkpoint_every_steps``, and where ``--max_minutes``
stops it, mid-epoch, after validating) keeping ``checkpoint_prev.pth`` to fall back to, re-running
the command resumes exactly (the whole RNG state is kept), a resumed run refuses other settings or
other data, non-finite losses or gradients stop it before an update, TensorBoard gets the losses and
reconstructions (mid-slices of volumes).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_ood.data.loading import mid_slices
from ddpm_ood.models.autoencoders import first_stage_kind
from ddpm_ood.models.first_stage import build_autoencoder, decode_raw, encode_raw
from ddpm_ood.models.model_file import save_first_stage_file
from ddpm_ood.training.loop import (StepResult, TrainingRun, check_finite, check_resume_preprocessing,
                                    fixed_setting_changes)
from ddpm_ood.training.settings import AutoencoderSettings, data_differences
from ddpm_ood.utils.distributed import Dist
from ddpm_ood.utils.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)


def discriminator(spatial_dims: int, in_channels: int) -> torch.nn.Module:
    """MONAI's PatchDiscriminator as ddpm-ood trains its VQ-VAE against: 2 layers, 32 channels."""
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=2, channels=32, in_channels=in_channels,
                              out_channels=1)


def check_discriminator(image_shape, adversarial_weight: float) -> None:
    """Before any work: with an adversarial loss, the patch discriminator runs on images of ``image_shape``
    (C, *spatial) (its four convolutions of kernel 4 need about 12 pixels a side), or a ConfigError says what to do."""
    if not adversarial_weight:
        return
    shape = tuple(int(d) for d in image_shape)
    try:
        with torch.no_grad():
            discriminator(len(shape) - 1, shape[0]).eval()(torch.zeros(1, *shape))
    except RuntimeError as err:
        raise ConfigError(f"The adversarial loss's patch discriminator does not run on images of {shape} ({str(err)[:120]}"
                          "): give larger images (--image_size, --image_roi) or turn the adversarial loss off "
                          "(--adversarial_weight 0).") from None


class AutoencoderTrainer(TrainingRun):
    """One first stage's training state (the autoencoder, the discriminator, their optimizers) and
    its step, on the run machinery train.py's DDPM uses too (one process)."""

    checkpoint_kind = "first_stage_checkpoint"
    main_loss = "generator"
    label = "first stage, "
    noun = "the first stage's training"

    def __init__(self, kind: str, network: dict, train_images, val_images, settings: AutoencoderSettings,
                 run_dir: Path, device: torch.device, data: dict, perceptual=None, preprocessing: dict | None = None,
                 dist: Dist = Dist()):
        from monai.losses import JukeboxLoss, PatchAdversarialLoss

        super().__init__(settings, run_dir, len(train_images), device, dist)
        self.kind, self.network, self.data = kind, network, data
        self.preprocessing = preprocessing  # how volumes were cropped and resized (data.loading.preprocessing_record)
        self.train_images, self.val_images = train_images, val_images
        self.image_shape = [int(d) for d in train_images.shape[1:]]
        torch.manual_seed(settings.seed)
        self.model = build_autoencoder(kind, network).to(device)
        spatial = network["spatial_dims"]
        self.discriminator = discriminator(spatial, network["in_channels"]).to(device)
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self.spectral = JukeboxLoss(spatial_dims=spatial) if settings.spectral_weight else None
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        self.optimizer_g = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=settings.lr_d)
        # Under torchrun both networks are DistributedDataParallel (a VQ-VAE's codebook is synchronised by MONAI's
        # EMA quantiser itself); ``model`` and ``discriminator`` keep the parameters and the files.
        self.net_g, self.net_d = self.model, self.discriminator
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.net_g = DistributedDataParallel(self.model, device_ids=ids)
            if settings.adversarial_weight:
                self.net_d = DistributedDataParallel(self.discriminator, device_ids=ids)

    # --- state ---------------------------------------------------------------------------------

    def record(self) -> dict:
        record = {"autoencoder": self.kind, "network": self.network, "image_shape": self.image_shape,
                  "training": self.settings.record(), "data": self.data}
        return {**record, "preprocessing": self.preprocessing} if self.preprocessing is not None else record

    def learning_rate(self) -> float:
        return self.optimizer_g.param_groups[0]["lr"]

    def write_model(self, path: Path, epochs_done: int) -> None:
        if not self.dist.is_main:
            return
        save_first_stage_file(path, self.kind, self.network, self.model.state_dict(), epochs_done, self.val_loss,
                              self.image_shape, self.settings.record(), self.data, self.preprocessing)

    def training_state(self) -> dict:
        return {"model": self.model.state_dict(), "discriminator": self.discriminator.state_dict(),
                "optimizer_g": self.optimizer_g.state_dict(), "optimizer_d": self.optimizer_d.state_dict(),
                "config": {}, **self.record()}

    def load_training_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        for optimizer, lr, flag in ((self.optimizer_g, self.settings.lr, "--lr"),
                                    (self.optimizer_d, self.settings.lr_d, "--lr_d")):
            if optimizer.param_groups[0]["lr"] != lr:  # the optimizer's state holds the old rate
                logger.info("%s %g -> %g from step %d on.", flag, optimizer.param_groups[0]["lr"], lr, state["step"])
                for group in optimizer.param_groups:
                    group["lr"] = lr

    def check_resume(self, state: dict) -> None:
        check_resume_preprocessing(self.files.dir, state, self.preprocessing)
        problems = []
        if (state["autoencoder"], state["network"]) != (self.kind, self.network):
            problems.append("the network (--autoencoder and the --vqvae_* flags)")
        problems += [f"--{change}" for change in fixed_setting_changes(state["training"], self.settings.record(),
                                                                       AutoencoderSettings.FIXED)]
        problems += data_differences(state.get("data"), self.data)
        if problems:
            raise ConfigError(f"The first stage in {self.files.dir} was trained otherwise: {'; '.join(problems)}. "
                              "Resume with the same flags and data, or start a new --model_name.")

    def start(self) -> None:
        """Resume from the newest whole checkpoint when there is one; a run with model files but no
        checkpoint is refused (training again would overwrite them)."""
        state = self.read_resume_state()
        if state is None:
            done = self.model_files()
            if done:
                raise CheckpointError(f"{self.files.dir} holds {' and '.join(done)} but no checkpoint.pth to resume "
                                      "from: training again would overwrite them; use a new --model_name.")
            return
        self.restore(state)

    # --- losses and one step -------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and the regulariser (a VQ-VAE's quantisation loss, an AutoencoderKL's weighted KL)."""
        return first_stage_kind(self.kind).training_forward(self.net_g, images, self.settings.kl_weight)

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
            logits = self.net_d(recon.contiguous().float())[-1]
            losses["adversarial"] = self.adversarial(logits, target_is_real=True, for_discriminator=False)
        weights = {"perceptual": self.settings.perceptual_weight, "spectral": self.settings.spectral_weight,
                   "adversarial": self.adversarial_weight()}
        losses["generator"] = sum(value * weights.get(name, 1.0) for name, value in losses.items())
        return losses

    def begin_epoch(self) -> None:
        self.model.train()

    def run_step(self, rows: torch.Tensor, flag: float) -> StepResult:
        """The generator's update, then the discriminator's; each loss and its gradients are checked
        for non-finite values before its optimizer moves. Under torchrun each rank takes its slice of the
        global batch, its losses weighted by its share, so that the averaged gradients are the batch's."""
        share = self.dist.share(len(rows))
        weight = (share.stop - share.start) * self.dist.world_size / len(rows)
        images = self.train_images[rows[share] if weight else rows[:1]].to(self.device)
        weight = weight if weight else 0.0  # fewer images than ranks: a zero-weight row keeps DDP in step
        recon, regulariser = self.forward(images)
        losses = self.generator_losses(images, recon, regulariser)
        self.optimizer_g.zero_grad(set_to_none=True)
        (losses["generator"] * weight).backward()
        flags = check_finite(losses["generator"], self.model.parameters(), True, self.dist, flag)
        self.optimizer_g.step()
        if self.settings.adversarial_weight:
            self.optimizer_d.zero_grad(set_to_none=True)
            fake = self.net_d(recon.detach().contiguous())[-1]
            real = self.net_d(images.contiguous())[-1]
            loss_d = 0.5 * (self.adversarial(fake, target_is_real=False, for_discriminator=True) +
                            self.adversarial(real, target_is_real=True, for_discriminator=True))
            (self.adversarial_weight() * loss_d * weight).backward()
            check_finite(loss_d, self.discriminator.parameters(), True, self.dist)
            self.optimizer_d.step()
            losses["discriminator"] = loss_d
        return StepResult({name: value.detach() * weight for name, value in losses.items()}, flags)

    @torch.no_grad()
    def reconstruction_l1(self) -> float:
        """Mean L1 between the validation images and their reconstructions, as the scorer decodes them."""
        self.model.eval()
        total = 0.0
        for first in range(0, len(self.val_images), self.settings.batch_size):
            images = self.val_images[first:first + self.settings.batch_size].to(self.device)
            recon = decode_raw(self.model, self.kind, encode_raw(self.model, self.kind, images))
            total += float(F.l1_loss(recon, images, reduction="sum")) / images[0].numel()
        return total / len(self.val_images)

    def validate(self, epochs_done: int) -> float:
        """The validation L1; the first validation images and their reconstructions to TensorBoard."""
        from torchvision.utils import make_grid

        val_loss = self.reconstruction_l1()  # every rank, over the whole set (the ranks agree on it)
        if not self.dist.is_main:
            return val_loss
        self.writer.add_scalar("val/l1", val_loss, self.step)
        images = self.val_images[:8].to(self.device)
        with torch.no_grad():
            recon = decode_raw(self.model, self.kind, encode_raw(self.model, self.kind, images)).clamp(0, 1)
        grid = torch.cat([mid_slices(images), mid_slices(recon)]).cpu()
        self.writer.add_image("reconstructions (inputs, then their reconstructions)",
                              make_grid(grid, nrow=len(images)), self.step)
        return val_loss

    def run(self) -> dict:
        self.start()
        return self.run_loop()


def latent_scale(latents: torch.Tensor) -> float:
    """1 / the standard deviation of the training latents (latent diffusion's scale factor).

    A first stage that encodes every image to one latent has collapsed, however much that one latent
    varies in space: the guard looks at how the latents vary *across images*, element by element."""
    latents = latents.double()
    std = float(latents.std())
    across_images = float(latents.std(dim=0).max()) if len(latents) > 1 else std
    if not np.isfinite(std) or std == 0 or across_images == 0:
        raise ConfigError(f"The first stage encodes every one of the {len(latents)} training images to the same "
                          "latent: it has collapsed (or is not trained). Train it longer or otherwise "
                          "(train_vqvae.py), and check its validation reconstructions in TensorBoard.")
    return 1.0 / std
