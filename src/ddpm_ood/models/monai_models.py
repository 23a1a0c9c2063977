"""MONAI diffusion models as model sources: a MONAI model-zoo bundle folder, and a run of ddpm-ood's
later (MONAI-based) code, each alone or with its autoencoder (``AutoencoderKL`` or ``VQVAE``) as the
first stage.

- **A bundle** (``MonaiBundle``): ``configs/*.json`` (read in name order, ``inference.json`` last,
  so it wins) with ``network_def`` (a ``DiffusionModelUNet``), ``noise_scheduler`` (or
  ``scheduler``: a ``DDPMScheduler`` or ``DDIMScheduler``), optionally ``autoencoder_def`` and
  ``scale_factor``; weights in ``models/model.pt`` and ``models/model_autoencoder.pt``. References
  (``"@spatial_dims"``) are resolved; a Python expression (``"$..."``) inside what we build is
  refused (a bundle's expressions are code; this loader runs none). ``generative.networks.*``
  targets (MONAI Generative, before it moved into MONAI) map to ``monai.networks.*``, with
  ``num_channels`` read as ``channels``.
- **A ddpm-ood run** (``DdpmOodRun``): ``checkpoint.pth`` (``model_state_dict``) and the arguments
  its ``train_ddpm.py`` ran with, as ``args.json`` (``json.dump(vars(args))``): ``model_type``
  (small or big, as ddpm-ood builds them), ``spatial_dimension``, ``is_grayscale``,
  ``prediction_type``, ``beta_schedule`` / ``beta_start`` / ``beta_end``, ``b_scale`` (the latents
  times b before noising, the decoded image divided by b, as its reconstruct.py), ``snr_shift`` and, for
  a latent model, ``vqvae_checkpoint`` (its ``checkpoint.pth`` with ``vqvae_config.json`` beside it,
  ddpm-ood's layout) and ``latent_pad``; ``simplex_noise`` (AnoDDPM's noise, its defaults).

The schedule is MONAI's own scheduler's ``alphas_cumprod``; the UNet's output is converted to eps as
for diffusers models (:class:`ddpm_ood.models.spaces.PredictionEps`). Weights are read with
``torch.load(weights_only=True)``: no pickled code runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ddpm_ood.models.model_file import file_facts, load_weights, read_weights
from ddpm_ood.models.spaces import IMAGE_RANGE, ImageSpace, Network, PixelSpace, PredictionEps
from ddpm_ood.diffusion.ddpm import DDPMSchedule, shift_snr
from ddpm_ood.utils.errors import ConfigError
from ddpm_ood.diffusion.ddpm import PREDICTIONS
from ddpm_ood.models.config import DDPM_OOD_UNETS

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
NETWORKS = ("DiffusionModelUNet", "AutoencoderKL", "VQVAE")
DDPM_OOD_SCHEDULES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta"}


class MonaiEps(PredictionEps):
    """A MONAI ``DiffusionModelUNet`` as eps(x, t)."""

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, timesteps=t)


def build(target: str, args: dict, where: str) -> torch.nn.Module:
    """``monai.networks.nets.<name>`` of a bundle's ``_target_`` (``generative.networks.nets.<name>`` too)."""
    import inspect

    from monai.networks import nets

    name = str(target).rsplit(".", 1)[-1]
    if name not in NETWORKS:
        raise ConfigError(f"{where}: _target_ {target!r} is not one of MONAI's {', '.join(NETWORKS)}.")
    cls = getattr(nets, name)
    args = dict(args)
    if "num_channels" in args and "channels" in inspect.signature(cls).parameters:
        args["channels"] = args.pop("num_channels")  # MONAI Generative's name
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"{where}: cannot build {name} from {sorted(args)} ({err}).") from None


def load_into(module: torch.nn.Module, state: dict, path: Path) -> torch.nn.Module:
    return load_weights(module, state, path, "the network its config describes").eval().requires_grad_(False)


def monai_schedule(config: dict, where: str) -> tuple[DDPMSchedule, str]:
    """The schedule and prediction type, as MONAI's own DDPMScheduler computes ``alphas_cumprod``."""
    from monai.networks.schedulers import DDPMScheduler

    name = str(config.get("_target_", "DDPMScheduler")).rsplit(".", 1)[-1]
    if name not in SCHEDULERS:
        raise ConfigError(f"{where}: the scheduler {name!r} is not a DDPM-family one ({', '.join(SCHEDULERS)}); the "
                          "method needs a model trained with a beta schedule.")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ConfigError(f"{where}: prediction_type = {prediction!r}; choose from {PREDICTIONS}.")
    args = {k: v for k, v in config.items() if not k.startswith("_") and k in
            ("num_train_timesteps", "schedule", "beta_start", "beta_end", "sig_range", "s")}
    try:
        scheduler = DDPMScheduler(**args)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"{where}: MONAI's DDPMScheduler refuses {args} ({err}).") from None
    return DDPMSchedule.from_alphas_cumprod(scheduler.alphas_cumprod.double().numpy()), prediction


def latent_image_shape(autoencoder_kind: str, args: dict, latent_shape) -> tuple[int, ...]:
    """The images an autoencoder decodes ``latent_shape`` (C, *spatial) to."""
    from ddpm_ood.models.autoencoders import first_stage_kind

    factor = first_stage_kind(autoencoder_kind).downsampling(args)
    return (int(args.get("out_channels", args.get("in_channels", 1))), *(int(d) * factor for d in latent_shape[1:]))


def network_of(unet: torch.nn.Module, schedule: DDPMSchedule, prediction: str, image_space: ImageSpace, space,
               config: dict, files: dict, location: str, recorded: dict | None = None) -> Network:
    """``recorded``: the diffusion's settings as ddpm-ood's flags name them (reconstruct.py checks its flags)."""
    return Network(MonaiEps(unet, schedule, prediction, int(config.get("in_channels", 1))), schedule, image_space,
                   space, prediction, config, {"config": config,
                                               "diffusion": recorded or {"prediction_type": prediction}},
                   files, location)


# --- a model-zoo bundle ----------------------------------------------------------------------------

def read_bundle(folder: Path) -> dict:
    configs = sorted((folder / "configs").glob("*.json"), key=lambda p: (p.name == "inference.json", p.name))
    merged: dict = {}
    for path in configs:
        if path.name in ("metadata.json",):
            continue
        try:
            merged.update(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise ConfigError(f"Cannot read the bundle config {path} ({err}).") from None
    if "network_def" not in merged:
        raise ConfigError(f"{folder}: no configs/*.json defines network_def (the diffusion UNet); is it a MONAI "
                          "bundle of a diffusion model?")
    return merged


def resolve(value, config: dict, where: str, depth: int = 0):
    """A bundle value with its ``@name`` references replaced by their values (``_`` keys dropped)."""
    if depth > 20:
        raise ConfigError(f"{where}: references nest too deeply (a cycle?).")
    if isinstance(value, str) and value.startswith("@"):
        node = config
        for part in value[1:].split("::" if "::" in value else "#"):
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError):
                raise ConfigError(f"{where}: the reference {value} names nothing in the bundle's configs.") from None
        return resolve(node, config, where, depth + 1)
    if isinstance(value, str) and value.startswith("$"):
        raise ConfigError(f"{where}: {value[:80]!r} is a Python expression; this loader runs none of a bundle's code: "
                          "write its value into the config instead.")
    if isinstance(value, dict):
        return {k: resolve(v, config, where, depth + 1) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [resolve(v, config, where, depth + 1) for v in value]
    return value


def load_bundle(folder: str | Path) -> Network:
    from ddpm_ood.models.first_stage import LatentSpace

    folder = Path(folder)
    config = read_bundle(folder)
    where = f"{folder}/configs"
    unet_def = config["network_def"]
    unet_args = resolve(unet_def, config, f"{where} network_def")
    unet_path = folder / "models" / "model.pt"
    unet = load_into(build(unet_def.get("_target_", ""), unet_args, f"{where} network_def"),
                     read_weights(unet_path, "diffusion UNet"), unet_path)
    scheduler_def = config.get("noise_scheduler", config.get("scheduler"))
    if not isinstance(scheduler_def, dict):
        raise ConfigError(f"{where}: no noise_scheduler (or scheduler) definition: the schedule the model was trained "
                          "with is needed.")
    schedule, prediction = monai_schedule({**resolve(scheduler_def, config, f"{where} noise_scheduler"),
                                           "_target_": scheduler_def.get("_target_", "")}, f"{where} noise_scheduler")
    channels = int(unet_args.get("in_channels", 1))
    dims = int(unet_args.get("spatial_dims", 2))
    space, image_space = IMAGE_RANGE, ImageSpace(channels, None, dims)
    if "autoencoder_def" in config:
        ae_def = config["autoencoder_def"]
        ae_args = resolve(ae_def, config, f"{where} autoencoder_def")
        ae_path = folder / "models" / "model_autoencoder.pt"
        kind = "vqvae" if str(ae_def.get("_target_", "")).endswith("VQVAE") else "autoencoderkl"
        module = load_into(build(ae_def.get("_target_", ""), ae_args, f"{where} autoencoder_def"),
                           read_weights(ae_path, "autoencoder"), ae_path)
        latent = resolve(config.get("latent_shape", [channels] + [0] * dims), config, where)
        shape = latent_image_shape(kind, ae_args, latent) if all(int(d) > 0 for d in latent[1:]) else None
        scale = float(resolve(config.get("scale_factor", 1.0), config, where))
        space = LatentSpace(module, kind, {**ae_args, "channels": ae_args.get("channels", ae_args.get("num_channels"))},
                            shape or (int(ae_args.get("in_channels", 1)),) + (0,) * dims, scale, 0, None, str(ae_path))
        image_space = ImageSpace(space.image_shape[0], shape, dims)
    return network_of(unet, schedule, prediction, image_space, space, unet_args, file_facts(unet_path, pretrained=str(folder)), str(folder))


# --- a ddpm-ood run --------------------------------------------------------------------------------

def load_ddpm_ood(folder: str | Path) -> Network:
    from ddpm_ood.models.first_stage import LatentSpace

    folder = Path(folder)
    args_path, checkpoint = folder / "args.json", folder / "checkpoint.pth"
    try:
        args = json.loads(args_path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{args_path}: cannot read ddpm-ood's arguments ({err}); save them with "
                          "json.dump(vars(args), f) beside checkpoint.pth.") from None
    where = str(args_path)
    b_scale, snr_shift = float(args.get("b_scale", 1.0) or 1.0), float(args.get("snr_shift", 1.0) or 1.0)
    if b_scale <= 0 or snr_shift <= 0:
        raise ConfigError(f"{where}: b_scale = {b_scale} and snr_shift = {snr_shift} must be above 0.")
    model_type = args.get("model_type", "small")
    if model_type not in DDPM_OOD_UNETS:
        raise ConfigError(f"{where}: model_type = {model_type!r}; ddpm-ood builds 'small' or 'big'.")
    dims = int(args.get("spatial_dimension", 2))
    image_channels = 1 if int(args.get("is_grayscale", 0)) else 3
    size = int(args["image_size"]) if args.get("image_size") else None
    space, channels = IMAGE_RANGE, image_channels
    image_space = ImageSpace(image_channels, (image_channels,) + (size,) * dims if size else None, dims)
    if args.get("vqvae_checkpoint"):
        vq_path = Path(args["vqvae_checkpoint"])
        vq_path = vq_path if vq_path.is_absolute() or vq_path.exists() else folder / vq_path
        config_path = vq_path.parent / "vqvae_config.json"
        try:
            vq_args = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}: the model is latent, but its first stage's config {config_path} cannot be read "
                              f"({err}); restore the VQ-VAE run (vqvae_config.json and checkpoint.pth).") from None
        module = load_into(build("VQVAE", vq_args, str(config_path)), read_weights(vq_path, "VQ-VAE"), vq_path)
        pad = args.get("latent_pad") or [0]
        pad = [pad] if isinstance(pad, int) else list(pad)  # an int in some args.json files, a list in others
        if len(set(pad)) != 1:
            raise ConfigError(f"{where}: latent_pad = {pad}: only the same padding on every side is supported.")
        vq_args = {**vq_args, "channels": vq_args.get("channels", vq_args.get("num_channels"))}
        shape = (image_channels,) + (size,) * dims if size else (image_channels,) + (0,) * dims
        space = LatentSpace(module, "vqvae", vq_args, shape, 1.0, int(pad[0]), None, str(vq_path))
        channels = int(vq_args.get("embedding_dim", 64))
    unet_args = {"spatial_dims": dims, "in_channels": channels, "out_channels": channels, "with_conditioning": False,
                 **DDPM_OOD_UNETS[model_type]}
    unet = load_into(build("DiffusionModelUNet", unet_args, where), read_weights(checkpoint, "DDPM"), checkpoint)
    schedule_name = args.get("beta_schedule", "linear")
    schedule, prediction = monai_schedule({"schedule": DDPM_OOD_SCHEDULES.get(schedule_name, schedule_name),
                                           "beta_start": args.get("beta_start", 1e-4),
                                           "beta_end": args.get("beta_end", 2e-2),
                                           "prediction_type": args.get("prediction_type", "epsilon")}, where)
    if snr_shift != 1.0:
        schedule = DDPMSchedule.from_alphas_cumprod(shift_snr(schedule.alphas_cumprod, snr_shift))
    simplex = int(bool(args.get("simplex_noise", 0)))
    if simplex:  # its generate_simplex_noise's defaults: 6 octaves, persistence 0.8, frequency 64
        from ddpm_ood.diffusion.noise import SimplexNoise

        schedule.noise = SimplexNoise()
    if b_scale != 1.0:  # as its reconstruct.py: the data times b before noising, the decoded image divided by b
        space = PixelSpace(0.0, b_scale) if space is IMAGE_RANGE else DecodedOverB(space, b_scale)
    recorded = {"beta_schedule": DDPM_OOD_SCHEDULES.get(schedule_name, schedule_name),
                "beta_start": args.get("beta_start", 1e-4), "beta_end": args.get("beta_end", 2e-2),
                "prediction_type": prediction, "b_scale": b_scale, "snr_shift": snr_shift, "model_type": model_type,
                "simplex_noise": simplex}
    return network_of(unet, schedule, prediction, image_space, space, unet_args,
                      file_facts(checkpoint, pretrained=str(folder)), str(folder), recorded)


class DecodedOverB:
    """ddpm-ood's ``b_scale`` on a latent model, as its reconstruct.py applies it: the latents are multiplied by
    b before noising, and the *decoded image* is divided by b (not the latent: the two differ for a nonlinear
    decoder). Every other fact is the first stage's."""

    def __init__(self, inner, b_scale: float):
        self.inner, self.b_scale = inner, float(b_scale)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(images) * self.b_scale

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(x) / self.b_scale

    def to(self, device) -> "DecodedOverB":
        self.inner = self.inner.to(device)
        return self

    def record(self) -> dict:
        return {**self.inner.record(), "b_scale_of_decoded_image": self.b_scale}
