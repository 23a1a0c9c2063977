"""Pretrained diffusion models in the diffusers format: a ``UNet2DModel`` and its scheduler config.

A source is a local folder as ``save_pretrained`` or ``huggingface_hub.snapshot_download`` lays
it out, with the UNet's ``config.json`` and weights and the ``scheduler_config.json`` either at
the folder's root or in ``unet/`` and ``scheduler/``, or a Hugging Face hub id
(``google/ddpm-cifar10-32``), fetched by huggingface_hub when online and read from its cache
offline.

What we take from it, and how it maps onto our conventions:

- the schedule, from the scheduler config as diffusers computes it (float32 betas and cumulative
  product): ``beta_schedule`` ``linear`` (diffusers' name: linear in beta, our ``plain_linear``),
  ``scaled_linear`` (linear in sqrt(beta): our, and latent-diffusion's, ``linear``),
  ``squaredcos_cap_v2`` (the cosine schedule), or ``trained_betas``; ``num_train_timesteps``.
  t indexes ``alphas_cumprod`` exactly as ``DDPMScheduler.add_noise`` does;
- the model's output as eps: ``epsilon`` as it is; ``v_prediction`` by eps = sqrt(a) v +
  sqrt(1 - a) x_t; ``sample`` (x0) by eps = (x_t - sqrt(a) x0) / sqrt(1 - a), a = alphas_cumprod[t];
  a UNet with a learned variance (twice the input channels) gives eps as its first half;
- the data range: diffusers models are trained on images in [-1, 1]; our pipeline's images are in
  [0, 1], mapped to [-1, 1] on the way in (and reconstructions back on the way out);
- the image shape, from the UNet config (``in_channels``, ``sample_size``).

Safety: the weights are read with safetensors when the folder has them, and a ``.bin`` only
through ``torch.load(weights_only=True)``, so a malicious pickle never runs. diffusers is
imported only here, only when a pretrained model is asked for.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_ood.models.model_file import file_facts, load_weights, read_weights
from ddpm_ood.models.spaces import ImageSpace, Network, PixelSpace, PredictionEps  # noqa: F401 (PredictionEps: its old home)
from ddpm_ood.diffusion.ddpm import PREDICTIONS, DDPMSchedule
from ddpm_ood.utils.errors import ConfigError

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # preferred first
SCHEDULER_CONFIG = "scheduler_config.json"
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # diffusers' names; or trained_betas
DATA_RANGE = (-1.0, 1.0)
# Schedulers of the variance-preserving DDPM family: a beta schedule over discrete timesteps, which
# is what the model was trained with and all we take from the file (no _class_name: DDPMScheduler).
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DDIMInverseScheduler", "DDPMParallelScheduler",
    "DDIMParallelScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
    "UniPCMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
)
# Parts of a pipeline folder that mean the UNet does not run on pixels (a latent pipeline): an
# LDMPipeline's vqvae (a VQModel) is taken as the model's first stage; a vae (Stable Diffusion's, for
# text-conditioned UNets) is refused.
FIRST_STAGES = ("vqvae", "vae")


@dataclass(frozen=True)
class PretrainedFiles:
    given: str  # the path or hub id as given (recorded in the results' manifests)
    unet_config: Path
    weights: Path
    scheduler_config: Path
    first_stage: Path | None = None  # an LDMPipeline's vqvae/ folder (a VQModel)


def locate(given: str) -> PretrainedFiles:
    """The files of a pretrained model: ``given`` is a local folder or a hub id."""
    if not str(given).strip():
        raise ConfigError("--pretrained is empty (an unset shell variable?): pass a diffusers folder or hub id, or "
                          "leave the flag out to use the run's own model.")
    path = Path(given).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--pretrained {given} is a file; pass the folder that holds config.json and "
                              "scheduler_config.json (or unet/ and scheduler/).")
        root = path.resolve()
    elif looks_local(given):
        existing = next((p for p in path.parents if p.is_dir()), Path("."))
        raise ConfigError(f"--pretrained {given}: no such folder (the nearest one that exists is {existing.resolve()}); "
                          "check the path. A Hugging Face hub id is owner/name.")
    elif HUB_ID.fullmatch(given):
        root = fetch(given)
    else:
        raise ConfigError(f"--pretrained {given}: no such folder, and not a Hugging Face hub id (owner/name).")
    first_stage = latent_pipeline(given, root)
    root = root.parent if first_stage is not None and root.name == "unet" else root
    for unet_dir, scheduler_dir in ((root, root), (root / "unet", root / "scheduler")):
        if (unet_dir / "config.json").is_file():
            break
    else:
        raise ConfigError(f"--pretrained {given}: {root} has no UNet config (config.json at its root or in unet/).")
    scheduler = scheduler_dir / SCHEDULER_CONFIG
    if not scheduler.is_file():
        raise ConfigError(f"--pretrained {given}: {scheduler} does not exist; a diffusers model folder has the "
                          "scheduler config beside the UNet (or in scheduler/).")
    weights = next((unet_dir / name for name in WEIGHT_FILES if (unet_dir / name).is_file()), None)
    if weights is None:
        found = sorted(p.name for p in unet_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".json")
                       and p.name != "config.json")
        kind = ("sharded weights (an index and shards)" if any(n.endswith(".index.json") for n in found) else
                "only variant weights (e.g. fp16)" if found else "no weights")
        raise ConfigError(f"--pretrained {given}: {unet_dir} has {kind}{': ' + ', '.join(found) if found else ''}; "
                          f"one file {' or '.join(WEIGHT_FILES)} is needed. Re-save the UNet with diffusers' "
                          "save_pretrained(folder) (no variant, one shard).")
    return PretrainedFiles(given if not path.exists() else str(root), unet_dir / "config.json", weights, scheduler,
                           first_stage)


def looks_local(given: str) -> bool:
    """A path, not a hub id: it starts like one (/ ./ ../ ~), has more than one separator, or its
    first part is a folder here (``runs/ddpm`` with ``runs/`` present is a mistyped path)."""
    parts = Path(given).parts
    return (given.startswith(("/", ".", "~")) or len(parts) != 2 or "\\" in given
            or Path(given).expanduser().parent.is_dir() and str(Path(given).parent) not in ("", "."))


def latent_pipeline(given: str, root: Path) -> Path | None:
    """An LDMPipeline (vqvae/ + unet/ + scheduler/: CompVis/ldm-celebahq-256's layout) runs its UNet on
    a VQModel's latents: its vqvae/ folder, which becomes the model's first stage. A pipeline with a
    ``vae`` (Stable Diffusion's: text-conditioned) is refused; None for a pixel-space model."""
    parts = {name for name in FIRST_STAGES if (root / name).is_dir()}
    index = root / "model_index.json"
    if index.is_file():
        parts |= {name for name in read_json(index) if name in FIRST_STAGES}
    if not parts and root.name == "unet" and (root.parent / "model_index.json").is_file():
        return latent_pipeline(given, root.parent)
    if not parts:
        return None
    if parts != {"vqvae"}:
        raise ConfigError(f"--pretrained {given}: {root} is a latent-diffusion pipeline with {', '.join(sorted(parts))}: "
                          "only an LDMPipeline's VQModel (vqvae/) is supported as a first stage. Pass an unconditional "
                          "LDMPipeline or a pixel-space model.")
    vqvae = root / "vqvae"
    weights = [vqvae / name for name in WEIGHT_FILES if (vqvae / name).is_file()]
    if not (vqvae / "config.json").is_file() or not weights:
        raise ConfigError(f"--pretrained {given}: {vqvae} needs config.json and {' or '.join(WEIGHT_FILES)} (the "
                          "pipeline's VQModel, its first stage); re-save the pipeline with save_pretrained.")
    return vqvae


def fetch(repo_id: str) -> Path:
    """A hub model's folder in the huggingface_hub cache: read offline if cached, else downloaded."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.bin"]
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        pass
    how = (f"On a machine with internet access run `python -c \"from huggingface_hub import snapshot_download; "
           f"snapshot_download('{repo_id}')\"` once and copy its cache ({constants.HF_HUB_CACHE}) here, or pass "
           "--pretrained with a local folder.")
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"--pretrained {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {how}")
    try:
        logger.info("fetching %s from the Hugging Face hub...", repo_id)
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # no network, no such repository, a proxy: all mean "not here"
        raise ConfigError(f"--pretrained {repo_id} is not in the Hugging Face cache and cannot be downloaded "
                          f"({type(err).__name__}). {how}") from None


def read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"Cannot read {path} ({err}); re-fetch the model.") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a config (a JSON object); re-fetch the model.")
    return config


def schedule_from_config(path: Path) -> tuple[DDPMSchedule, str]:
    """The DDPM schedule and the prediction type of a scheduler config, as diffusers computes them."""
    config = read_json(path)
    scheduler = config.get("_class_name", "DDPMScheduler")
    if scheduler not in VP_SCHEDULERS:
        raise ConfigError(f"{path}: _class_name = {scheduler!r} is not a variance-preserving DDPM scheduler (score-SDE "
                          "VE, EDM, flow matching and consistency models are not DDPMs); the method needs a model "
                          f"trained with a beta schedule, as {', '.join(VP_SCHEDULERS[:3])} and the like have.")
    steps = config.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"{path}: num_train_timesteps = {steps!r} must be an integer of at least 2.")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ConfigError(f"{path}: prediction_type = {prediction!r} is not supported; choose from {PREDICTIONS}.")
    if config.get("rescale_betas_zero_snr"):
        raise ConfigError(f"{path}: rescale_betas_zero_snr = true is not supported (its last step has zero "
                          "signal, where eps and the score are undefined).")
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        given = config["trained_betas"]
        if not isinstance(given, list) or len(given) < 2 or not all(is_beta(b) for b in given):
            bad = next((b for b in given if not is_beta(b)), given) if isinstance(given, list) else given
            raise ConfigError(f"{path}: trained_betas must be a list of at least two numbers in (0, 1); "
                              f"found {str(bad)[:60]!r}.")
        betas = torch.tensor(given, dtype=torch.float32)
    elif not (is_beta(start) and is_beta(end)):
        bad = "beta_start" if not is_beta(start) else "beta_end"
        raise ConfigError(f"{path}: {bad} = {config.get(bad)!r} must be a number in (0, 1).")
    elif schedule == "linear":  # linear in beta: our plain_linear
        betas = torch.linspace(start, end, steps, dtype=torch.float32)
    elif schedule == "scaled_linear":  # linear in sqrt(beta): our (latent-diffusion's) linear
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = torch.tensor(cosine_betas(steps), dtype=torch.float32)
    else:
        raise ConfigError(f"{path}: beta_schedule = {schedule!r} is not supported; choose from {SCHEDULES} or give "
                          "trained_betas.")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # float32, as diffusers' schedulers hold it
    return DDPMSchedule.from_alphas_cumprod(alphas_cumprod.double().numpy()), prediction


def is_beta(value) -> bool:
    """A number (not a bool or a string), finite, in (0, 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def cosine_betas(steps: int, max_beta: float = 0.999) -> list[float]:
    """The cosine schedule (Nichol and Dhariwal 2021): alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2."""
    alpha_bar = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    return [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)]


class DiffusersEps(PredictionEps):
    """A diffusers UNet2DModel as eps(x, t), x in the model's own data range."""

    def __init__(self, unet: torch.nn.Module, schedule: DDPMSchedule, prediction: str):
        super().__init__(unet, schedule, prediction, unet.config.in_channels)

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def load_pretrained(given: str) -> Network:
    """A diffusers UNet2DModel (and an LDMPipeline's VQModel) at the boundary: eps in [-1, 1] pixels (or in
    the VQModel's latents), its identity's config, where its files are."""
    files = locate(given)
    config = read_json(files.unet_config)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ConfigError(f"{files.unet_config}: _class_name = {config.get('_class_name')!r} is not an unconditional "
                          "UNet2DModel, the only kind of diffusers model supported.")
    conditional = next((k for k in ("class_embed_type", "num_class_embeds") if config.get(k) is not None), None)
    if conditional:
        raise ConfigError(f"{files.unet_config}: {conditional} = {config[conditional]!r}: a class-conditional UNet, "
                          "which needs a class label per image; only unconditional models are supported.")
    size = config.get("sample_size")
    if not (isinstance(size, int) and size > 0 or isinstance(size, list) and len(size) == 2
            and all(isinstance(d, int) and d > 0 for d in size)):
        raise ConfigError(f"{files.unet_config}: sample_size = {size!r} must be the image size the model was trained "
                          "on (an integer, or [height, width]); set it in config.json.")
    schedule, prediction = schedule_from_config(files.scheduler_config)
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_config(config)
    except Exception as err:
        raise ConfigError(f"{files.unet_config} does not describe a UNet2DModel ({err}).") from err
    out_channels = unet.config.out_channels
    if out_channels not in (unet.config.in_channels, 2 * unet.config.in_channels):
        raise ConfigError(f"{files.unet_config}: out_channels = {out_channels} must be in_channels (eps) or twice it "
                          "(eps and a learned variance).")
    state = read_weights(files.weights)
    if hasattr(unet, "_fix_state_dict_keys_on_load"):  # attention weights under their older names
        state = unet._fix_state_dict_keys_on_load(dict(state))
    load_weights(unet, state, files.weights, files.unet_config)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(unet.config.in_channels), int(height), int(width))
    space = PixelSpace(*DATA_RANGE)
    if files.first_stage is not None:
        space = vqmodel_space(files.first_stage, shape)
        shape = space.image_shape
    network_config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return Network(DiffusersEps(unet.eval(), schedule, prediction), schedule, ImageSpace(shape[0], shape), space,
                   prediction, network_config, {"config": config, "diffusion": {"prediction_type": prediction}},
                   file_facts(files.weights, pretrained=files.given), files.given)


def vqmodel_space(folder: Path, latent_shape: tuple[int, ...]):
    """An LDMPipeline's VQModel as the model's first stage: latents scaled by its ``scaling_factor`` as
    the pipeline does; the images are (out_channels, latent size x 2^(levels - 1))."""
    from ddpm_ood.models.autoencoders import FIRST_STAGES
    from ddpm_ood.models.first_stage import LatentSpace, build_autoencoder

    config = {k: v for k, v in read_json(folder / "config.json").items() if not k.startswith("_")}
    module = build_autoencoder("diffusers-vqmodel", config)
    weights = next(folder / name for name in WEIGHT_FILES if (folder / name).is_file())
    load_weights(module, read_weights(weights), weights, folder / "config.json")
    if int(config.get("latent_channels", 3)) != latent_shape[0]:
        raise ConfigError(f"{folder}: the VQModel's latent_channels {config.get('latent_channels')} are not the UNet's "
                          f"in_channels {latent_shape[0]}: the pipeline's parts do not belong together.")
    factor = FIRST_STAGES["diffusers-vqmodel"].downsampling(config)
    image_shape = (int(config.get("out_channels", 3)), *(d * factor for d in latent_shape[1:]))
    return LatentSpace(module.eval().requires_grad_(False), "diffusers-vqmodel", config, image_shape,
                       float(config.get("scaling_factor", 1.0)), 0, None, str(folder))
