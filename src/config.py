"""Configs: one YAML file (OmegaConf) plus ``key=value`` command-line overrides.

The layout is the original code's (``ldm.base_lr``, ``ldm.params.*``,
``ldm.params.unet_config.params.*``) so its config files load unchanged. The resolved config
is saved beside every run and inside every model file, so ``reconstruct.py`` rebuilds the
model and schedule from the checkpoint alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.diffusion import BETA_SCHEDULES, DDPMSchedule
from src.unet import UNet

CONFIG_DIR = Path(__file__).parent / "configs" / "diffusion"
UNET_KEYS = (
    "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
    "num_heads", "dropout", "use_scale_shift_norm", "resblock_updown", "conv_resample", "num_groups", "norm_eps",
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the file and the key."""


def default_config_file(is_grayscale: bool) -> Path:
    return CONFIG_DIR / ("diffusion_grayscale.yaml" if is_grayscale else "diffusion_colour.yaml")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML config, merge ``a.b.c=value`` overrides and check it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist; see src/configs/diffusion/ for examples.")
    try:
        cfg = OmegaConf.load(path)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"Cannot read config {path} with overrides {list(overrides)}: {err}") from err
    check_config(cfg, source=str(path))
    return cfg


def check_config(cfg: DictConfig, source: str = "config") -> None:
    params = cfg.get("ldm", {}).get("params")
    if params is None or "unet_config" not in params:
        raise ConfigError(f"{source} has no ldm.params.unet_config section; see src/configs/diffusion/.")
    if params.get("parameterization", "eps") != "eps":
        raise ConfigError(f"{source}: only parameterization 'eps' is implemented, got {params.parameterization!r}.")
    if params.get("loss_type", "l2") != "l2":
        raise ConfigError(f"{source}: only loss_type 'l2' is implemented, got {params.loss_type!r}.")
    if params.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        raise ConfigError(f"{source}: beta_schedule must be one of {BETA_SCHEDULES}, got {params.beta_schedule!r}.")
    unknown = set(params.unet_config.params) - set(UNET_KEYS) - {"image_size"}
    if unknown:
        raise ConfigError(f"{source}: unknown UNet setting(s) {sorted(unknown)}; known: {list(UNET_KEYS)}.")


def to_container(cfg: DictConfig) -> dict:
    """Plain dict of the config, as stored in checkpoints (readable with weights_only=True)."""
    return OmegaConf.to_container(cfg, resolve=True)


def build_schedule(cfg: DictConfig | dict) -> DDPMSchedule:
    params = OmegaConf.create(cfg).ldm.params
    return DDPMSchedule(
        num_timesteps=params.get("timesteps", 1000),
        beta_schedule=params.get("beta_schedule", "linear"),
        beta_start=params.get("linear_start", 0.0015),
        beta_end=params.get("linear_end", 0.0195),
    )


def build_unet(cfg: DictConfig | dict) -> UNet:
    unet_params = OmegaConf.to_container(OmegaConf.create(cfg).ldm.params.unet_config.params, resolve=True)
    return UNet(**{k: v for k, v in unet_params.items() if k in UNET_KEYS})


def check_channels(cfg: DictConfig | dict, is_grayscale: bool, source: str) -> None:
    """The data's channel count must be the model's."""
    in_channels = OmegaConf.create(cfg).ldm.params.unet_config.params.in_channels
    expected = 1 if is_grayscale else 3
    if in_channels != expected:
        raise ConfigError(
            f"{source} builds a model with in_channels={in_channels}, but --is_grayscale={int(is_grayscale)} "
            f"means {expected}-channel images. Use diffusion_{'grayscale' if is_grayscale else 'colour'}.yaml "
            "or fix --is_grayscale."
        )
