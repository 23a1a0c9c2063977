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


@dataclass(frozen=True)
class DataRange:
    """The range of the images a model was trained on; the pipeline's images are in [0, 1]."""

    low: float = 0.0
    high: float = 1.0

    @property
    def identity(self) -> bool:
        return (self.low, self.high) == (0.0, 1.0)

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the model's range (nothing to do for our own models)."""
        return images if self.identity else images * (self.high - self.low) + self.low

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """The model's range -> [0, 1], where MSE, LPIPS and the figures see the images."""
        return x if self.identity else (x - self.low) / (self.high - self.low)


IMAGE_RANGE = DataRange()


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a model file of train.py ("run"), or a pretrained diffusers model
    ("diffusers": a local folder or a Hugging Face hub id)."""

    kind: str
    location: str

    @classmethod
    def from_manifest(cls, manifest: dict, run_dir: Path | None = None) -> "ModelSource":
        """The model that made results with this manifest. A run's model file is looked for in
        ``run_dir`` (the run may have been moved or copied) and where it was, the one with the
        recorded SHA-256 first; the caller checks the loaded model's SHA-256 against the manifest's."""
        if manifest.get("pretrained"):
            return cls("diffusers", manifest["pretrained"])
        from src.files import file_sha256

        recorded = Path(manifest["model_file"])
        candidates = [p for p in dict.fromkeys([*([Path(run_dir) / recorded.name] if run_dir else []), recorded])
                      if p.is_file()]
        if not candidates:
            from src.errors import CheckpointError

            raise CheckpointError(f"The model file {recorded} that made these results is gone"
                                  f"{f' (and {run_dir} holds no {recorded.name})' if run_dir else ''}; re-run "
                                  "reconstruct.py and ood_detection.py with the run's model.")
        if len(candidates) == 1:  # hashed once, by the loader, whose SHA-256 the caller checks
            return cls("run", str(candidates[0]))
        match = next((p for p in candidates if file_sha256(p) == manifest.get("model_sha256")), candidates[0])
        return cls("run", str(match))

    def __str__(self) -> str:
        return self.location if self.kind == "run" else f"pretrained {self.location}"

    @classmethod
    def choose(cls, run, eval_checkpoint: str | None = None, pretrained: str | None = None) -> "ModelSource":
        """reconstruct.py's model: --pretrained, or the run's model file (--eval_checkpoint or the best one)."""
        if pretrained:
            if eval_checkpoint:
                from src.errors import ConfigError

                raise ConfigError("--pretrained and --eval_checkpoint name two models; pass one of them.")
            return cls("diffusers", pretrained)
        return cls("run", str(run.find_model_file(eval_checkpoint)))


@dataclass
class LoadedModel:
    """A model ready to score with, and the facts about it the pipeline checks and records."""

    model_fn: ModelFn  # (x, t) -> eps, x in data_range
    schedule: DDPMSchedule
    image_shape: tuple[int, ...] | None  # (C, H, W) the model takes; None: unknown (an older model file)
    channels: int
    source: ModelSource
    info: dict  # a model file's other entries (epoch, val_loss, config, ...)
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    data_range: DataRange
    recorded: dict  # the model group of every results manifest

    @property
    def config(self) -> dict:
        return self.info.get("config", {})

    def manifest(self) -> dict:
        """The model group of every results manifest: which model file (or pretrained source), its size
        and time (and, for pretrained weights, their SHA-256)."""
        return dict(self.recorded)

    def describe(self) -> str:
        if self.source.kind == "run":
            return f"model {self.source} (epoch {self.info.get('epoch')}); the config stored in it is used"
        return f"{self.source}: {self.recorded['model_file']}, images {self.image_shape} in [{self.data_range.low}, " \
               f"{self.data_range.high}]"

    def is_grayscale(self, flag: int | None) -> bool:
        """--is_grayscale, checked against the model's channels (None: the model's)."""
        if flag is None:
            return self.channels == 1
        if self.source.kind == "run":
            from src.config import check_channels

            check_channels(self.config, bool(flag), str(self.source))
        elif self.channels != (1 if flag else 3):
            from src.errors import ConfigError

            raise ConfigError(f"The {self.source} model takes {self.channels}-channel images, but --is_grayscale="
                              f"{int(bool(flag))} means {1 if flag else 3}-channel ones; fix --is_grayscale.")
        return bool(flag)

    def check_images(self, image_set, split) -> None:
        """Images of another size or channel count than the model's are refused, naming the file."""
        from src.data import check_image_shape

        check_image_shape(image_set, self.image_shape, f"the model {self.source}", split)


def load_model_fn(source: ModelSource | str | Path, device: torch.device, precision: str = "fp32",
                  channels_last: bool = False, compile_model: bool = False, max_batch: int | None = None,
                  batch_size: int = DEFAULT_BATCH_SIZE) -> LoadedModel:
    """The model of ``source`` (a model file or training checkpoint of train.py, or a pretrained
    diffusers model), as the model function every detector calls."""
    if not isinstance(source, ModelSource):
        source = ModelSource("run", str(source))
    precision = resolve_precision(precision, device)
    if source.kind == "diffusers":
        from src.pretrained import DATA_RANGE, load_pretrained

        pretrained = load_pretrained(source.location)
        source = ModelSource("diffusers", pretrained.files.given)
        module, schedule, shape = pretrained.eps.to(device).eval(), pretrained.schedule, pretrained.image_shape
        info, data_range, recorded = {"config": pretrained.config}, DataRange(*DATA_RANGE), pretrained.manifest()
        channels = shape[0]
    else:
        from src.checkpoint import load_model

        path = Path(source.location)
        module, schedule, config, info = load_model(path, device)
        shape = tuple(int(d) for d in info["image_shape"]) if info.get("image_shape") is not None else None
        from src.files import file_sha256

        stat = path.stat()
        recorded = {"model_file": str(path.resolve()), "model_file_bytes": stat.st_size,
                    "model_file_mtime_ns": stat.st_mtime_ns, "model_sha256": file_sha256(path)}
        unet = config.get("ldm", {}).get("params", {}).get("unet_config", {}).get("params", {})
        info, data_range, channels = {**info, "config": config}, IMAGE_RANGE, int(unet.get("in_channels", 1))
    model_fn = model_function(module, device, precision, channels_last, compile_model, max_batch, batch_size)
    return LoadedModel(model_fn, schedule, shape, channels, source, info, device, precision, data_range, recorded)
