"""A latent model's first stage: an autoencoder (MONAI's ``VQVAE`` or ``AutoencoderKL``, diffusers'
``VQModel``: every kind is an entry of ``ddpm_ood.models.autoencoders.FIRST_STAGES``) between
images and the latents the DDPM is trained on, as ddpm-ood's later versions and the authors' MICCAI
2023 paper run the method.

- :func:`build_autoencoder`: the network of a recorded ``kind`` and constructor arguments.
- :func:`locate_first_stage` / :func:`read_first_stage`: ``train_vqvae.py``'s model files
  (``{"kind": "first_stage", "autoencoder", "network", "model", "image_shape", "data", ...}``), read
  back with errors that name the file and say what to pass instead.
- :class:`LatentSpace`: the model space of a latent DDPM, the same interface as
  :class:`ddpm_ood.models.spaces.PixelSpace` (``encode``: images in [0, 1] -> scaled, padded latents;
  ``decode``: back to images), so reconstruction, every detector and the API run through it unchanged.
  How each kind encodes and decodes (a VQ-VAE quantises, an AutoencoderKL gives its mean) is its
  registry entry's.

The latents are multiplied by ``scale`` (1 / their standard deviation on the DDPM's training set,
as latent diffusion does) and zero-padded by ``pad`` on every side of every spatial axis
(``train.py --latent_pad``, for UNets whose downsampling needs a larger latent).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_ood.models.autoencoders import first_stage_kind
from ddpm_ood.utils.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

FIRST_STAGE_KIND = "first_stage"


def build_autoencoder(kind: str, network: dict) -> torch.nn.Module:
    """The autoencoder of a registered ``kind`` (``models.autoencoders.FIRST_STAGES``) with the
    constructor arguments ``network``."""
    return first_stage_kind(kind).build(network)


def locate_first_stage(run_or_file: str | Path) -> Path:
    """``--vqvae_checkpoint``: a run folder of train_vqvae.py (its best_model.pth, else final_model.pth)
    or one of its model files."""
    path = Path(run_or_file)
    if path.is_dir():
        for name in ("best_model.pth", "final_model.pth"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no best_model.pth or final_model.pth: train the first stage with "
                              "train_vqvae.py first, or pass its model file.")
    if not path.exists():
        raise CheckpointError(f"The first stage {path} does not exist: pass a run folder of train_vqvae.py or its "
                              "best_model.pth.")
    return path


def read_first_stage(path: str | Path) -> dict:
    """A first stage's model file, checked: ``kind`` first_stage, with its network and weights."""
    from ddpm_ood.models.model_file import read_model_file

    path = locate_first_stage(path)
    try:
        obj = read_model_file(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} (--vqvae_checkpoint takes a model file of train_vqvae.py)") from None
    kind = obj.get("kind", "model")
    if kind == "first_stage_checkpoint":  # ddpm-ood's README passes <run>/checkpoint.pth: its latest weights
        logger.info("%s is a training checkpoint of train_vqvae.py: its latest weights are used (the run's "
                    "best_model.pth holds those with the lowest validation loss).", path)
    elif kind != FIRST_STAGE_KIND:
        raise CheckpointError(f"{path} is a DDPM's {kind} file (train.py's), not a first stage: --vqvae_checkpoint "
                              "takes train_vqvae.py's run folder, its best_model.pth or its checkpoint.pth.")
    training_only = ("discriminator", "optimizer_g", "optimizer_d", "rng", "data_order")  # a checkpoint's
    return {**{k: v for k, v in obj.items() if k not in training_only}, "kind": FIRST_STAGE_KIND, "file": str(path)}


def autoencoder_from(record: dict, where: str) -> torch.nn.Module:
    """The autoencoder of a first stage record, its weights loaded, in eval mode."""
    from ddpm_ood.models.model_file import load_weights

    module = build_autoencoder(record["autoencoder"], record["network"])
    load_weights(module, record["model"], f"The first stage in {where}", "the network it records (retrain it with "
                 "train_vqvae.py)")
    return module.eval().requires_grad_(False)


def encode_raw(module: torch.nn.Module, kind: str, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> unscaled latents, as the registered ``kind`` encodes."""
    return first_stage_kind(kind).encode(module, images)


def decode_raw(module: torch.nn.Module, kind: str, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images (in [0, 1] for a well-trained first stage; not clamped)."""
    return first_stage_kind(kind).decode(module, latents)


class LatentSpace:
    """A latent DDPM's model space: images in [0, 1] <-> scaled, padded latents (see the module)."""

    def __init__(self, module: torch.nn.Module, kind: str, network: dict, image_shape, scale: float = 1.0,
                 pad: int = 0, data: dict | None = None, location: str = ""):
        self.module, self.kind, self.network = module, kind, dict(network)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.scale, self.pad = float(scale), int(pad)
        self.data = data or {}  # the first stage's training data (train_config.data_record)
        self.location = location
        self.low, self.high = 0.0, 1.0  # what the images are in (describe())
        self._weights = None

    @classmethod
    def from_record(cls, record: dict, where: str) -> "LatentSpace":
        """From a first stage's model file, or the ``first_stage`` entry a latent DDPM's file keeps."""
        return cls(autoencoder_from(record, where), record["autoencoder"], record["network"], record["image_shape"],
                   record.get("scale", 1.0), record.get("pad", 0), record.get("data"), record.get("file", where))

    def to(self, device) -> "LatentSpace":
        self.module.to(device)
        return self

    @torch.no_grad()
    def encode_unscaled(self, images: torch.Tensor) -> torch.Tensor:
        return encode_raw(self.module, self.kind, images.float()).float()

    def batched(self, function, x: torch.Tensor) -> torch.Tensor:
        """``function`` on (N, C, *spatial) batches of ``x``, whatever leading dims it has ((B, K, C, ...)
        reconstructions from K start points, as a pixel space takes them)."""
        rank = len(self.image_shape)  # C and the spatial axes
        lead = x.shape[:-rank]
        out = function(x.reshape(-1, *x.shape[-rank:]))
        return out.reshape(*lead, *out.shape[1:])

    def place(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (N, C, *spatial) -> model space: scaled by ``scale``, zero-padded by ``pad``."""
        z = latents * self.scale
        return F.pad(z, (self.pad,) * (2 * (z.dim() - 2))) if self.pad else z

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.batched(lambda x: self.place(self.encode_unscaled(x)), images)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        def decode(z):
            if self.pad:
                z = z[(slice(None), slice(None)) + (slice(self.pad, -self.pad),) * (z.dim() - 2)]
            return decode_raw(self.module, self.kind, z.float() / self.scale).float()
        return self.batched(decode, z)

    to_model, to_image = encode, decode  # deprecated names since 0.4 (2026-11); removed in 0.6

    def weights_digest(self) -> str:
        if self._weights is None:
            from ddpm_ood.models.spaces import weights_digest

            self._weights = weights_digest(self.module.state_dict())
        return self._weights

    def record(self) -> dict:
        """What the model's identity takes of it: the autoencoder's weights and network, scale and pad."""
        network = hashlib.sha256(json.dumps(self.network, sort_keys=True, default=str).encode()).hexdigest()
        return {"kind": "latent", "autoencoder": self.kind, "weights": self.weights_digest(), "network": network,
                "scale": self.scale, "pad": self.pad, "image_shape": list(self.image_shape)}

    def entry(self) -> dict:
        """The ``first_stage`` entry a latent DDPM's checkpoints and model files keep: all it takes to
        rebuild this space, so the DDPM's model file is whole on its own."""
        return {"kind": FIRST_STAGE_KIND, "autoencoder": self.kind, "network": self.network,
                "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "image_shape": list(self.image_shape), "scale": self.scale, "pad": self.pad, "data": self.data,
                "file": self.location}


def check_images_for(record: dict, shape, where: str, first_stage: str) -> None:
    """Images of ``shape`` (C, H, W[, D]) must be what the first stage was trained on."""
    from ddpm_ood.models.spaces import ImageSpace

    expected = tuple(int(d) for d in record["image_shape"])
    shape = tuple(int(d) for d in shape)
    if shape != expected:
        fix = ImageSpace(expected[0], expected).fix(shape, record.get("preprocessing"))
        raise ConfigError(f"The images of {where} have shape {shape}, but the first stage {first_stage} was trained "
                          f"on {expected}: {fix}, or train a first stage on such images (train_vqvae.py).")
