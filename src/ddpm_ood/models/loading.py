"""The model boundary: where a model's files become the one object every detector calls.

A :class:`ModelSource` names where a model comes from; each kind is a class, registered in
``SOURCES`` by its ``kind``: :class:`RunModel` (a model file or checkpoint of ``train.py``, or a run
folder), :class:`MonaiBundle` (a MONAI model-zoo bundle), :class:`DdpmOodRun` (a run of ddpm-ood's
later code) and :class:`DiffusersModel` (a diffusers folder or hub id). A new kind is one subclass
with ``recognises()`` (does this location hold my kind?) and ``load()`` (a :class:`Network`, the
one record of a network every source builds), and one entry in ``SOURCES``: ``--pretrained``
asks each registered source in turn, and ``tests/models/test_loading_sources.py`` runs the contract over
the registry.

:func:`load_model` turns a source into a :class:`LoadedModel`, which states:

- its **identity** (:func:`model_identity`): one digest over the weights' *values* as the network
  holds them (not the file's bytes or format), the network's config, the schedule's
  ``alphas_cumprod``, the prediction type, the image space and the model space. Every results
  manifest and fit records it, and results of two identities are never scored together;
- its **image space** (:class:`ImageSpace`: the (C, H, W) images it takes, in [0, 1]) and its
  **model space** (what the network sees), with ``encode``/``decode`` between them
  (a :class:`ModelSpace`: :class:`PixelSpace`, an affine map of the pixel range, or a first
  stage's ``LatentSpace``, which encodes to latents);
- its **eps function** ``model_fn(x, t) -> eps`` in model space: autocast to the chosen
  precision, optional channels_last and torch.compile, float32 output, and large calls split
  into chunks on a CPU.

``reconstruct.py``, the Python API and the benchmarks load models through it; training's
TensorBoard previews wrap the model being trained with :func:`model_function`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ddpm_ood.diffusion.ddpm import DDPMSchedule, ModelFn
from ddpm_ood.models.spaces import (IMAGE_RANGE, ImageSpace, ModelSpace, Network, PixelSpace,  # noqa: F401
                                    identity_parts, model_identity)
from ddpm_ood.runs.layout import identity_differences
from ddpm_ood.utils.errors import CheckpointError, ConfigError
from ddpm_ood.utils.runtime import autocast, memory_format, resolve_precision, to_channels_last
from ddpm_ood.models.unet import compile_unet

logger = logging.getLogger("ddpm_ood")

DEFAULT_BATCH_SIZE = 64  # images per batch of reconstruct.py and of the Python API


def unet_caller(model: torch.nn.Module, device: torch.device, precision: str = "fp32", channels_last: bool = False,
                compile_model: bool = False) -> ModelFn:
    """``model`` as the sampler calls it: autocast to ``precision``, optional channels_last and
    torch.compile, float32 output."""
    if channels_last:
        to_channels_last(model)
    net = compile_unet(model) if compile_model else model

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            return net(x.contiguous(memory_format=memory_format(channels_last, x.dim())), t).float()

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


# --- model sources --------------------------------------------------------------------------------

class ModelSource:
    """Where a model comes from. Subclasses set ``kind`` and ``load()``; ``SOURCES`` registers them."""

    kind: ClassVar[str] = ""

    def __init__(self, location: str | Path):
        self.location = str(location)

    def load(self) -> Network:
        raise NotImplementedError

    @classmethod
    def recognises(cls, location: str) -> bool:
        """Whether ``location`` (given to --pretrained) holds a model of this kind."""
        return False

    @classmethod
    def at(cls, location: str) -> "ModelSource":
        """The source of this kind at ``location`` (which :meth:`recognises` accepted)."""
        return cls(location)

    @staticmethod
    def of(kind: str, location: str | Path) -> "ModelSource":
        try:
            return SOURCES[kind](location)
        except KeyError:
            raise ConfigError(f"Unknown model source {kind!r}; known: {', '.join(SOURCES)}.") from None

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelSource) and (self.kind, self.location) == (other.kind, other.location)

    def __hash__(self) -> int:
        return hash((self.kind, self.location))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def __str__(self) -> str:
        return self.location

    @classmethod
    def from_manifest(cls, manifest: dict, run_dir: Path | None = None) -> "ModelSource":
        """The model that made results with this manifest. A run's own model file is recorded relative
        to the run and looked for there only (a moved or copied run uses its own file, never the
        original's); a file outside the run is where it was recorded. The caller compares the loaded
        model's identity with the manifest's."""
        kind = manifest.get("model_source") or ("diffusers" if manifest.get("pretrained") else "run")
        if kind != "run":
            location = manifest.get("pretrained") or manifest["model_file"]
            if Path(location).is_absolute() and not Path(location).exists():  # a folder (a hub id is relative)
                raise CheckpointError(f"The pretrained model {location} that made these results is gone (moved?).")
            return cls.of(kind, location)
        recorded = Path(manifest["model_file"])
        if run_dir is not None and not recorded.is_absolute():
            path = Path(run_dir) / recorded
        elif run_dir is not None and (Path(run_dir) / recorded.name).is_file() and "model_id" not in manifest:
            path = Path(run_dir) / recorded.name  # an older manifest: the run's own file of that name
        else:
            path = recorded
        if not path.is_file():
            raise CheckpointError(f"The model file {path} that made these results is gone; re-run reconstruct.py and "
                                  "ood_detection.py with the run's model.")
        return RunModel(path)

    @classmethod
    def choose(cls, run, eval_checkpoint: str | None = None, pretrained: str | None = None) -> "ModelSource":
        """reconstruct.py's model: --pretrained, or the run's model file (--eval_checkpoint or the best one)."""
        if pretrained is not None:
            if eval_checkpoint:
                raise ConfigError("--pretrained and --eval_checkpoint name two models; pass one of them.")
            return pretrained_source(pretrained)
        return RunModel(run.find_model_file(eval_checkpoint))


class RunModel(ModelSource):
    """A model file (``best_model.pth``, ``final_model.pth``) or training checkpoint of train.py:
    the network config and the schedule are stored inside it."""

    kind = "run"

    @classmethod
    def recognises(cls, location: str) -> bool:
        from ddpm_ood.runs.layout import BEST_MODEL, FINAL_MODEL

        path = Path(location).expanduser()
        if path.is_dir():
            return any((path / name).is_file() for name in (BEST_MODEL, FINAL_MODEL))
        return path.is_file() and path.suffix == ".pth"

    @classmethod
    def at(cls, location: str) -> "RunModel":
        """A run folder's best model file (else its final one), or the model file itself."""
        from ddpm_ood.runs.layout import BEST_MODEL, FINAL_MODEL

        path = Path(location).expanduser()
        if path.is_dir():
            path = next(path / name for name in (BEST_MODEL, FINAL_MODEL) if (path / name).is_file())
        return cls(path)

    def load(self) -> Network:
        from ddpm_ood.models.config import b_scale, build_schedule, network_record
        from ddpm_ood.models.model_file import file_facts, read_model_file, unet_of
        from ddpm_ood.models.spaces import as_eps

        path = Path(self.location)
        obj = read_model_file(path)
        module, config = unet_of(obj, path), obj["config"]
        info = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "ema_model", "scaler", "rng")}
        unet = network_record(config)
        shape = tuple(int(d) for d in info["image_shape"]) if info.get("image_shape") is not None else None
        channels = int(unet.get("in_channels", 1))
        scale = b_scale(config)  # the data times b before noising: the pixel range [0, b]
        dims = int(unet.get("spatial_dims", unet.get("dims", 2)))  # an older file without its image shape: the UNet's
        image_space = ImageSpace(channels, shape, dims)
        space = IMAGE_RANGE if scale == 1.0 else PixelSpace(0.0, scale)
        if info.get("first_stage"):  # a latent model: its first stage is kept inside its file (b_scale in its scale)
            from ddpm_ood.models.first_stage import LatentSpace

            space = LatentSpace.from_record(info["first_stage"], str(path))
            image_space = ImageSpace(space.image_shape[0], space.image_shape)
            info["first_stage"] = {k: v for k, v in info["first_stage"].items() if k != "model"}
        schedule = build_schedule(config)
        return Network(as_eps(module, schedule, schedule.prediction, channels), schedule, image_space, space,
                       schedule.prediction, unet, {**info, "config": config, "diffusion": recorded_settings(config)},
                       file_facts(path), str(path))


# ddpm-ood's later flags for the diffusion (ddpm_ood.cli.add_diffusion_flags), as the model records them.
DIFFUSION_FLAGS = ("beta_schedule", "beta_start", "beta_end", "prediction_type", "model_type", "b_scale", "snr_shift",
                   "simplex_noise")


def recorded_settings(config: dict) -> dict:
    """A run's diffusion settings as ddpm-ood's flags name them (what reconstruct.py checks its flags against)."""
    from ddpm_ood.diffusion.ddpm import PREDICTION_NAMES
    from ddpm_ood.models.config import DDPM_OOD_UNETS, MONAI_UNET

    params = config.get("ldm", {}).get("params", {})
    unet = params.get("unet_config", {})
    model_type = "ours"
    if unet.get("target") == MONAI_UNET:
        model_type = next((name for name, kind in DDPM_OOD_UNETS.items()
                           if all(unet.get("params", {}).get(k) == v for k, v in kind.items())), "monai (custom)")
    return {"beta_schedule": params.get("beta_schedule", "linear"), "beta_start": params.get("linear_start", 0.0015),
            "beta_end": params.get("linear_end", 0.0195), "prediction_type": PREDICTION_NAMES.get(params.get("parameterization", "eps")),
            "b_scale": params.get("b_scale", 1.0), "snr_shift": params.get("snr_shift", 1.0), "model_type": model_type,
            "simplex_noise": int(params.get("noise", "gaussian") == "simplex")}


def diffusion_flag_mismatches(given: dict, recorded: dict) -> tuple[list[str], list[str]]:
    """reconstruct.py's diffusion flags (``ddpm_ood.cli.diffusion_flags_given``) against what the model records:
    (the mismatches, each naming both values; the flags the model records nothing for)."""
    import math

    from ddpm_ood.diffusion.ddpm import PLAIN_LINEAR, PREDICTION_NAMES, SQRT_LINEAR

    def same(name, a, b) -> bool:
        if name == "beta_schedule":
            return any(a in names and b in names for names in (SQRT_LINEAR, PLAIN_LINEAR))
        if name == "prediction_type":
            return PREDICTION_NAMES.get(a, a) == PREDICTION_NAMES.get(b, b)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
        return a == b

    mismatches, unknown = [], []
    for name, value in given.items():
        if name not in recorded:
            unknown.append(f"--{name}")
        elif not same(name, value, recorded[name]):
            mismatches.append(f"--{name} {value} but the model was trained with {name} = {recorded[name]}")
    return mismatches, unknown


class DiffusersModel(ModelSource):
    """A diffusers ``UNet2DModel`` and its scheduler config: a local folder or a hub id."""

    kind = "diffusers"

    @classmethod
    def recognises(cls, location: str) -> bool:
        return True  # a diffusers folder, or a hub id: asked last, it takes what no other kind recognised

    def __str__(self) -> str:
        return f"pretrained {self.location}"

    def load(self) -> Network:
        from ddpm_ood.models.diffusers_models import load_pretrained

        return load_pretrained(self.location)


class MonaiBundle(ModelSource):
    """A MONAI model-zoo bundle folder of a diffusion model (``configs/*.json``, ``models/*.pt``), with
    its autoencoder when it has one (:mod:`ddpm_ood.models.monai_models`)."""

    kind = "monai-bundle"

    @classmethod
    def recognises(cls, location: str) -> bool:
        path = Path(location).expanduser()
        return (path / "configs").is_dir() and (path / "models").is_dir()

    def __str__(self) -> str:
        return f"MONAI bundle {self.location}"

    def load(self) -> Network:
        from ddpm_ood.models.monai_models import load_bundle

        return load_bundle(self.location)


class DdpmOodRun(ModelSource):
    """A run folder of ddpm-ood's later code: ``checkpoint.pth`` and its arguments, ``args.json``."""

    kind = "ddpm-ood"

    @classmethod
    def recognises(cls, location: str) -> bool:
        path = Path(location).expanduser()
        return (path / "args.json").is_file() and (path / "checkpoint.pth").is_file()

    def __str__(self) -> str:
        return f"ddpm-ood run {self.location}"

    def load(self) -> Network:
        from ddpm_ood.models.monai_models import load_ddpm_ood

        return load_ddpm_ood(self.location)


# Asked in this order by --pretrained: the first that recognises a location loads it (diffusers,
# which takes any folder or hub id, last).
SOURCES: dict[str, type[ModelSource]] = {source.kind: source for source in (RunModel, MonaiBundle, DdpmOodRun,
                                                                            DiffusersModel)}


def pretrained_source(location: str) -> ModelSource:
    """--pretrained's source: the first registered kind that recognises what ``location`` holds."""
    source = next(source for source in SOURCES.values() if source.recognises(location))
    return source.at(str(Path(location).expanduser()) if source is not DiffusersModel else location)


# --- the loaded model -----------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A model ready to score with, and the facts about it the pipeline checks and records."""

    model_fn: ModelFn  # (x, t) -> eps, x in model space
    schedule: DDPMSchedule
    image_space: ImageSpace
    space: ModelSpace  # image <-> model space
    source: ModelSource
    info: dict  # a model file's other entries (epoch, val_loss, config, ...)
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    identity: str  # model_identity(parts)
    parts: dict  # identity_parts
    files: dict  # where its files were (recorded, never compared)

    @property
    def config(self) -> dict:
        return self.info.get("config", {})

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self.image_space.shape

    @property
    def channels(self) -> int:
        return self.image_space.channels

    @property
    def data_range(self) -> ModelSpace:
        """Deprecated name of :attr:`space` since 0.4 (2026-11); removed in 0.6."""
        return self.space

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.image_space.dims

    def check_diffusion_flags(self, given: dict, first_stage: str | None = None) -> None:
        """reconstruct.py's --beta_schedule, --prediction_type, --b_scale, ... and --vqvae_checkpoint (ddpm-ood's
        later flags) say what the model already records: any that disagrees is refused, naming both values."""
        self.check_first_stage(first_stage)
        mismatches, unknown = diffusion_flag_mismatches(given, self.info.get("diffusion") or {})
        if mismatches:
            raise ConfigError(f"The model {self.source} was not trained as these flags say: {'; '.join(mismatches)}. "
                              "The model's own settings are used for scoring: drop the flags, or give its values.")
        if unknown:
            logger.warning("%s: the model %s records no such setting; not checked.", ", ".join(unknown), self.source)

    def check_first_stage(self, given: str | None) -> None:
        """reconstruct.py's --vqvae_checkpoint (ddpm-ood's flag) must be the first stage the model holds: the
        model's own copy is what scores, so another one (or one given to a pixel model) is refused."""
        if given is None:
            return
        from ddpm_ood.models.first_stage import read_first_stage
        from ddpm_ood.models.spaces import weights_digest

        if not hasattr(self.space, "weights_digest"):
            raise ConfigError(f"--vqvae_checkpoint {given}, but the model {self.source} is a pixel-space model: it has "
                              "no first stage. Drop the flag, or score the latent DDPM trained on that first stage.")
        record = read_first_stage(given)
        if weights_digest(record["model"]) != self.space.weights_digest():
            raise ConfigError(f"--vqvae_checkpoint {record['file']} holds other weights than the first stage the model "
                              f"{self.source} was trained on (kept inside it, from {self.space.location}). The model's "
                              "own copy scores: drop the flag, or pass the first stage it was trained on.")

    def training_profile(self) -> dict | None:
        """The training images' range of foreground and intensity, for the input check at scoring time
        (``ddpm_ood.data.loading.profile_training_set``); None for models trained before it, or elsewhere."""
        return ((self.info.get("data") or {}).get("training") or {}).get("profile")

    def check_run(self, spatial_dimension: int | None, sets, flags: dict | None = None) -> tuple:
        """reconstruct.py's checks before any work: its --spatial_dimension, ddpm-ood's later flags in ``flags``
        (its arguments: those of DIFFUSION_FLAGS given, and --vqvae_checkpoint) against what the model records,
        and no test set that is the split the first stage was trained on. Returns the (--image_roi,
        --image_size, --intensity) to read the sets with (:meth:`preprocessing`)."""
        self.check_spatial_dimension(spatial_dimension)
        flags = flags or {}
        self.check_diffusion_flags({name: flags[name] for name in DIFFUSION_FLAGS if flags.get(name) is not None},
                                   flags.get("vqvae_checkpoint"))
        preprocessing = self.preprocessing(flags.get("image_roi"), flags.get("image_size"), flags.get("intensity"))
        self.adopt_preprocessing(preprocessing_record(*preprocessing))
        self.refuse_test_splits(sets)
        return preprocessing

    def adopt_preprocessing(self, record: dict | None) -> None:
        """Another library's model records no preprocessing: the --image_roi, --image_size and --intensity its
        sets were read with (``record``, non-defaults only) become its own, so the results manifest records them
        (:meth:`manifest`) and new images are made the same way when the run is scored later
        (``OODDetector``, ``--score_ids``). A model of this project records its own: nothing to adopt."""
        if record and self.source.kind != "run" and self.info.get("preprocessing") is None:
            self.info = {**self.info, "preprocessing": dict(record)}

    def check_spatial_dimension(self, flag: int | None) -> None:
        """--spatial_dimension, if given, must be the model's."""
        if flag not in (None, self.spatial_dims):
            raise ConfigError(f"--spatial_dimension {flag}, but the model {self.source} is {self.spatial_dims}D: leave "
                              "the flag out (the model's is used).")

    def first_stage_training(self) -> dict:
        """The first stage's training split record (train_config.data_record); {} for a pixel model."""
        return ((self.info.get("first_stage") or {}).get("data") or {}).get("training") or {}

    def refuse_test_splits(self, sets) -> None:
        """Before any work: a test set (in-distribution test or OOD; not "val" or "fit") that is the very
        split file the first stage was trained on is refused (the same images under another file name
        are refused when their pixels are read: :meth:`refuse_memorised`)."""
        from ddpm_ood.utils.errors import DataError

        trained = Path(self.first_stage_training().get("split") or "")
        for name, path, _ in sets:
            if name not in ("val", "fit") and trained.is_file() and Path(path).exists() and \
                    Path(path).resolve() == trained.resolve():
                raise DataError(f"The test set {path} is the split the model's first stage was trained on: its scores "
                                "would measure memorised images. Score held-out images, or train the first stage "
                                "(train_vqvae.py) on the training split.")

    def refuse_memorised(self, name: str, path, images_sha256: str, images=None) -> None:
        """A test set holding the images the first stage was trained on is refused: the very split, or (where
        the first stage kept each training image's digest) half its images or more, in any order and with
        others; a few are named in a warning."""
        from ddpm_ood.runs.layout import image_digests
        from ddpm_ood.utils.errors import DataError

        record = self.first_stage_training()
        if name in ("val", "fit") or not record:
            return
        advice = ("its scores would measure memorised images. Score held-out images, or train the first stage on "
                  "the training split.")
        if record.get("images_sha256") == images_sha256:
            raise DataError(f"The test set {path} holds exactly the images its first stage was trained on "
                            f"({record.get('split')}): {advice}")
        if images is None or not record.get("image_digests"):
            return
        trained = set(record["image_digests"])
        shared = sum(digest in trained for digest in image_digests(images))
        if shared and 2 * shared >= len(images):
            raise DataError(f"{shared} of the {len(images)} images of the test set {path} are images its first stage "
                            f"was trained on ({record.get('split')}): {advice}")
        if shared:
            logger.warning("%d of the %d images of %s are images the first stage was trained on (%s): their scores "
                           "measure memorised images.", shared, len(images), path, record.get("split"))

    def manifest(self, run_dir: Path | None = None) -> dict:
        """The model group of every results manifest: the identity (compared), its parts and where the
        files were (recorded). A model file inside ``run_dir`` is recorded relative to it."""
        files = dict(self.files)
        if run_dir is not None and "model_file" in files and self.source.kind == "run":
            path = Path(files["model_file"])
            if path.parent == Path(run_dir).resolve():
                files["model_file"] = path.name
        imported = self.info.get("preprocessing") if self.source.kind != "run" else None  # adopted: recorded
        return {"model_id": self.identity, "model_parts": self.parts, "model_source": self.source.kind, **files,
                **({"preprocessing": imported} if imported else {})}

    def differs_from(self, manifest: dict) -> str | None:
        """None if ``manifest`` (of results, or a fit) was made with this model; else what differs, in words."""
        if "model_id" not in manifest:  # written before identities: compare the file's bytes, as then
            from ddpm_ood.utils.files import file_sha256

            same = "model_file" in self.files and manifest.get("model_sha256") == file_sha256(self.files["model_file"])
            return None if same else "model file (SHA-256)"
        if manifest["model_id"] == self.identity:
            return None
        return identity_differences(manifest.get("model_parts"), self.parts)

    def describe(self) -> str:
        if self.source.kind == "run":
            return f"model {self.source} (epoch {self.info.get('epoch')}); the config stored in it is used"
        return f"{self.source}: {self.files.get('model_file')}, images {self.image_space.describe()} in " \
               f"[{self.space.low}, {self.space.high}]"

    def is_grayscale(self, flag: int | None) -> bool:
        """--is_grayscale, checked against the model's channels (None: the model's)."""
        if flag is None:
            return self.channels == 1
        if self.channels != (1 if flag else 3):
            raise ConfigError(f"The model {self.source} takes {self.channels}-channel images, but --is_grayscale="
                              f"{int(bool(flag))} means {1 if flag else 3}-channel ones; fix --is_grayscale (or leave it "
                              "out: the model's channels are used).")
        return bool(flag)

    def check_images(self, image_set, split) -> None:
        """Images of another size or channel count than the model's are refused, naming the file."""
        from ddpm_ood.data.loading import check_image_shape, describe_preprocessing

        what = f"the model {self.source}"
        if self.info.get("preprocessing") is not None:
            what += f" (trained on {describe_preprocessing(self.info['preprocessing'])})"
        check_image_shape(image_set, self.image_space.shape, what, split, self.info.get("preprocessing"))

    def preprocessing(self, image_roi=None, image_size: int | None = None, intensity: str | None = None) -> tuple:
        """The (--image_roi, --image_size, --intensity) to read images with: the model's own, as its training
        recorded them (each flag given must agree with it), or the flags for a model that recorded none (older
        files, other libraries' models: min-max unless --intensity says otherwise)."""
        from ddpm_ood.data.loading import MINMAX, describe_preprocessing, record_intensity

        recorded = self.info.get("preprocessing")
        if recorded is None and self.source.kind != "run":
            return image_roi, image_size, intensity or MINMAX
        recorded = recorded or {}  # a run's model file that records nothing: 2D, min-max
        given = {"image_roi": list(image_roi) if image_roi else None, "image_size": image_size}
        wrong = [f"--{name} {value}" for name, value in given.items()
                 if value is not None and name in recorded and value != recorded[name]]
        if intensity is not None and intensity != record_intensity(recorded):
            wrong.append(f"--intensity {intensity}")
        if wrong:
            raise ConfigError(f"{' and '.join(wrong)}, but the model {self.source} was trained on "
                              f"{describe_preprocessing(recorded)}: its images must be made the same way. Drop the "
                              "flags (the model's are used) or give its values.")
        if "image_roi" not in recorded:  # a 2D run, or a 3D one from before 0.5.1: the flags as given
            return image_roi, image_size, record_intensity(recorded)
        return recorded["image_roi"], recorded["image_size"], record_intensity(recorded)


def preprocessing_record(image_roi=None, image_size: int | None = None, intensity: str | None = None) -> dict:
    """The preprocessing record of these flags, their non-defaults only (as train.py's model files record it)."""
    from ddpm_ood.data.loading import MINMAX

    record = {"image_roi": list(image_roi) if image_roi else None, "image_size": image_size or None,
              "intensity": intensity if intensity not in (None, MINMAX) else None}
    return {key: value for key, value in record.items() if value is not None}


def load_model(source: ModelSource | str | Path, device: torch.device | str = "cpu", precision: str = "fp32",
               channels_last: bool = False, compile_model: bool = False, max_batch: int | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE) -> LoadedModel:
    """The model of ``source`` (a :class:`ModelSource`, or a path: a model file of train.py), as the
    model function every detector calls, with its identity and spaces."""
    if not isinstance(source, ModelSource):
        source = RunModel(source)
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    network = source.load()
    parts = identity_parts(network)
    source = type(source)(network.location or source.location)
    network.space.to(device)  # a first stage runs where the DDPM does
    model_fn = model_function(network.module.to(device).eval(), device, precision, channels_last, compile_model,
                              max_batch, batch_size)
    return LoadedModel(model_fn, network.schedule, network.image_space, network.space, source, network.info, device,
                       precision, model_identity(parts), parts, network.files)


load_model_fn = load_model  # deprecated name since 0.4 (2026-11); removed in 0.6
