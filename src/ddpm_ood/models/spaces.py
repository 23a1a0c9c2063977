"""The model boundary's vocabulary: image space and model space, and a model's identity.

- :class:`ImageSpace`: the images a model takes, (C, H, W) in [0, 1].
- :class:`PixelSpace`: a pixel-space model's model space, with ``encode`` (image -> what the
  network sees) and ``decode`` (back); a latent model's first stage is the same interface.
- :class:`Network`: what a model source builds: the network as eps(x, t) in model space, its
  schedule, both spaces, its prediction type and the config that shapes its numbers.
- :func:`identity_parts` / :func:`model_identity`: one digest over the weights' values, the
  network config, ``alphas_cumprod``, the prediction type and both spaces: what every results
  manifest and fit records and compares.

The sources that build a :class:`Network` and the loader live in :mod:`ddpm_ood.models.loading`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import numpy as np
import torch

from ddpm_ood.data.loading import resize_advice
from ddpm_ood.diffusion.ddpm import PREDICTION_NAMES, DDPMSchedule, eps_from_prediction
from ddpm_ood.utils.errors import DataError


# --- image space and model space -----------------------------------------------------------------

@dataclass(frozen=True)
class ImageSpace:
    """The images a model takes: (C, H, W) in [0, 1] (``shape`` None: an older model file that did
    not record its size; then only the channels are known)."""

    channels: int
    shape: tuple[int, ...] | None = None
    spatial_dims: int | None = None  # 2 or 3 where the size is unknown but the network's dimension is not

    @property
    def dims(self) -> int:
        """2 for images, 3 for volumes: from the shape, else the network's dimension, else 2."""
        return len(self.shape) - 1 if self.shape is not None else int(self.spatial_dims or 2)

    def describe(self) -> str:
        if self.shape is not None:
            return str(tuple(self.shape))
        return f"({self.channels}, H, W)" if self.dims == 2 else f"({self.channels}, D, H, W)"

    def mismatch(self, shape: tuple[int, ...]) -> bool:
        """Whether (C, H, W) images of ``shape`` are not what the model takes."""
        shape = tuple(int(d) for d in shape)
        return shape[:1] != (self.channels,) or (self.shape is not None and shape != tuple(self.shape))

    def check(self, images: torch.Tensor, where: str, model: str, preprocessing: dict | None = None) -> None:
        """A batch (N, C, H, W) of other channels or size than the model's is refused, naming it (and, for
        volumes, how the model's own were made: ``preprocessing``, as its file records it)."""
        shape = tuple(images.shape[1:])
        if len(shape) == self.dims + 1 and not self.mismatch(shape):
            return
        raise DataError(f"Images{where} have shape {shape}, but the model {model} takes {self.describe()}: "
                        f"{self.fix(shape, preprocessing)}, or use a model trained on such images.")

    def fix(self, shape: tuple[int, ...], preprocessing: dict | None = None) -> str:
        """What to do with images of ``shape`` that are not of this space: for volumes of a model trained on
        crops, make them as its own were (resizing a whole volume would give the right shape and the wrong
        picture)."""
        if len(tuple(shape)) - 1 != self.dims:
            return f"give it {'volumes (--spatial_dimension 3)' if self.dims == 3 else '2D images'}"
        if tuple(shape)[:1] != (self.channels,):
            return f"convert them to {self.channels} channel(s)"
        return resize_advice(preprocessing)


@runtime_checkable
class ModelSpace(Protocol):
    """What the network sees, and the way there and back: every model's ``space`` is one
    (:class:`PixelSpace`, or a latent model's ``ddpm_ood.models.first_stage.LatentSpace``)."""

    low: float  # the range the images are in once decoded (for describing the model)
    high: float

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (..., C, *spatial) -> model space."""

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> images in [0, 1] (where MSE, LPIPS and the figures see them)."""

    def to(self, device) -> "ModelSpace":
        """This space on ``device`` (a first stage's network moves; a pixel space has nothing to move)."""

    def record(self) -> dict:
        """What the model's identity takes of it."""


@dataclass(frozen=True)
class PixelSpace:
    """A pixel-space model: the network sees the image itself, mapped from [0, 1] to the range it
    was trained on (``[low, high]``: [0, 1] for ours, as the paper; [-1, 1] for diffusers models).

    ``encode`` (image -> model space) and ``decode`` (model space -> image) are the whole interface;
    a latent model's first stage is the same interface with an autoencoder behind it.
    """

    low: float = 0.0
    high: float = 1.0

    @property
    def identity(self) -> bool:
        return (self.low, self.high) == (0.0, 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the model's range (nothing to do for our own models)."""
        return images if self.identity else images * (self.high - self.low) + self.low

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The model's range -> [0, 1], where MSE, LPIPS and the figures see the images."""
        return x if self.identity else (x - self.low) / (self.high - self.low)

    to_model, to_image = encode, decode  # deprecated names since 0.4 (2026-11); removed in 0.6

    def to(self, device) -> "PixelSpace":
        return self

    def model_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(image_shape)

    def record(self) -> dict:
        """What the model's identity takes of it."""
        return {"kind": "pixel", "range": [float(self.low), float(self.high)]}


DataRange = PixelSpace  # deprecated name since 0.4 (2026-11); removed in 0.6
IMAGE_RANGE = PixelSpace()


# --- identity -------------------------------------------------------------------------------------

def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict's values as the network holds them: names, dtypes, shapes and
    bytes, in name order. The same weights from a .pth, a .bin or a .safetensors file (or in fp16
    loaded into an fp32 network) give one digest; any changed value gives another."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def schedule_digest(schedule: DDPMSchedule) -> str:
    return hashlib.sha256(np.ascontiguousarray(schedule.alphas_cumprod, dtype=np.float64).tobytes()).hexdigest()


def identity_parts(network: "Network") -> dict:
    """Every setting that changes a number the model gives, each as a digest or a small value."""
    space = network.space.record()
    parts = {
        "weights": weights_digest(network.module.state_dict()),
        "network": hashlib.sha256(json.dumps(network.config, sort_keys=True, default=str).encode()).hexdigest(),
        "alphas_cumprod": schedule_digest(network.schedule),
        "prediction": network.prediction,
        "image_space": [network.image_space.channels, list(network.image_space.shape or [])],
        "model_space": space,
        "first_stage": space if space.get("kind") == "latent" else None,
    }
    noise = getattr(network.schedule, "noise", None)  # a part only when not Gaussian: older identities stay
    if noise is not None:
        parts["noise"] = noise.record()
    intensity = (network.info.get("preprocessing") or {}).get("intensity")  # only when not min-max, likewise
    if intensity:
        parts["intensity"] = intensity
    return parts


def model_identity(parts: dict) -> str:
    """The model's identity: the SHA-256 of its :func:`identity_parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- what a model source builds ------------------------------------------------------------------

class PredictionEps(torch.nn.Module):
    """A UNet trained to predict eps, v or x0 (``prediction``) as eps(x, t), x in the model's own space:
    ``raw`` is the network's output (a UNet called as ``unet(x, t)``; other libraries' override it),
    converted to eps here (``ddpm_ood.diffusion.ddpm.eps_from_prediction``)."""

    def __init__(self, unet: torch.nn.Module, schedule: DDPMSchedule, prediction: str, channels: int):
        super().__init__()
        self.unet, self.prediction, self.channels = unet, PREDICTION_NAMES.get(prediction, prediction), channels
        self.register_buffer("sqrt_ab", torch.from_numpy(schedule.sqrt_alphas_cumprod).float(), persistent=False)
        self.register_buffer("sqrt_1m_ab", torch.from_numpy(schedule.sqrt_one_minus_alphas_cumprod).float(),
                             persistent=False)

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.raw(x, t)[:, :self.channels]  # a learned variance fills the second half
        if self.prediction == "epsilon":
            return out
        a, b = (table[t.long()].reshape(-1, *([1] * (x.dim() - 1))) for table in (self.sqrt_ab, self.sqrt_1m_ab))
        return eps_from_prediction(out, x, a, b, self.prediction)


def as_eps(unet: torch.nn.Module, schedule: DDPMSchedule, prediction: str, channels: int) -> torch.nn.Module:
    """``unet`` as eps(x, t): itself for an eps-prediction model, else converted (:class:`PredictionEps`)."""
    prediction = PREDICTION_NAMES.get(prediction, prediction)
    return unet if prediction == "epsilon" else PredictionEps(unet, schedule, prediction, channels)


@dataclass
class Network:
    """What a source builds, on the CPU: the network as eps(x, t) in model space, and its facts."""

    module: torch.nn.Module
    schedule: DDPMSchedule
    image_space: ImageSpace
    space: ModelSpace
    prediction: str  # what the network's output was trained as; ``module`` already returns eps
    config: dict  # the settings that shape the network's numbers (part of the identity)
    info: dict = field(default_factory=dict)  # other facts (a run's model file: epoch, val_loss, its config)
    files: dict = field(default_factory=dict)  # where it was: recorded in manifests, never compared
    location: str = ""  # the source's location as recorded (a hub id or a resolved folder)
