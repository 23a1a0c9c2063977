"""The one model loader: from a model file to the model function every detector calls.

:func:`load_model_fn` rebuilds the UNet and its schedule from a model file (the config is stored
inside it) and wraps it as ``model_fn(x, t) -> eps``: autocast to the chosen precision, optional
channels_last and torch.compile, float32 output, and large calls split into chunks on a CPU.
``reconstruct.py``, the Python API (``src.api``) and the benchmarks load models through it;
training's TensorBoard previews wrap the model being trained with :func:`model_function`.
The :class:`LoadedModel` it returns also says what every results manifest records of the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import torch

from src.diffusion import DDPMSchedule, ModelFn
from src.runtime import autocast, resolve_precision
from src.unet import compile_unet

DEFAULT_BATCH_SIZE = 64  # images per batch of reconstruct.py and of the Python API


def unet_caller(model: torch.nn.Module, device: torch.device, precision: str = "fp32", channels_last: bool = False,
                compile_model: bool = False) -> ModelFn:
    """``model`` as the sampler calls it: autocast to ``precision``, optional channels_last and
    torch.compile, float32 output."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = compile_unet(model) if compile_model else model

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return net(x.contiguous(memory_format=memory_format), t).float()

    return call


def default_model_batch(batch_size: int, device: torch.device) -> int:
    """Largest UNet call: the batch size on CPU (large calls outgrow the caches), no limit (0) on GPU."""
    return batch_size if device.type == "cpu" else 0


def in_chunks(model: ModelFn, max_batch: int | None) -> ModelFn:
    """Call ``model`` on at most ``max_batch`` images at a time (None or 0: no limit).

    On a CPU, per-image UNet throughput falls once a batch outgrows the caches, so the fused
    loop's large calls are split; on a GPU large calls are what make it fast.
    """
    if not max_batch:
        return model

    def chunked(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= max_batch:
            return model(x, t)
        return torch.cat([model(xc, tc) for xc, tc in zip(x.split(max_batch), t.split(max_batch))])

    return chunked


def model_function(model: torch.nn.Module, device: torch.device, precision: str = "fp32", channels_last: bool = False,
                   compile_model: bool = False, max_batch: int | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> ModelFn:
    """A UNet module as ``model_fn(x, t) -> eps``; ``max_batch`` None: the device's default for ``batch_size``."""
    unet = unet_caller(model, device, precision, channels_last, compile_model)
    return in_chunks(unet, default_model_batch(batch_size, device) if max_batch is None else max_batch)


@dataclass
class LoadedModel:
    """A model ready to score with, and the facts about it the pipeline checks and records."""

    model_fn: ModelFn
    schedule: DDPMSchedule
    image_shape: tuple[int, ...] | None  # (C, H, W) of the training images; None: unknown (an older model file)
    config: dict
    source: Path
    info: dict  # the model file's other entries (epoch, val_loss, ...)
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16

    def manifest(self) -> dict:
        """The model group of every results manifest: which file, and its size and time."""
        stat = self.source.stat()
        return {"model_file": str(self.source.resolve()), "model_file_bytes": stat.st_size,
                "model_file_mtime_ns": stat.st_mtime_ns}

    def check_channels(self, is_grayscale: bool) -> None:
        from src.config import check_channels

        check_channels(self.config, is_grayscale, str(self.source))

    def check_images(self, image_set, split) -> None:
        """Images of another size or channel count than the model's are refused, naming the file."""
        from src.data import check_image_shape

        check_image_shape(image_set, self.image_shape, f"the model {self.source}", split)


def load_model_fn(model_file: str | Path, device: torch.device, precision: str = "fp32", channels_last: bool = False,
                  compile_model: bool = False, max_batch: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> LoadedModel:
    """Rebuild the model and schedule stored in ``model_file`` (a model file or training checkpoint)."""
    from src.checkpoint import load_model

    model, schedule, config, info = load_model(model_file, device)
    precision = resolve_precision(precision, device)
    model_fn = model_function(model, device, precision, channels_last, compile_model, max_batch, batch_size)
    shape = info.get("image_shape")
    return LoadedModel(model_fn, schedule, tuple(int(d) for d in shape) if shape is not None else None, config,
                       Path(model_file), info, device, precision)
