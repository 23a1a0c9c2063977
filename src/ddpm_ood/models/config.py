"""Configs: one YAML file (OmegaConf) plus ``key=value`` command-line overrides.

The layout is the original code's (``ldm.base_lr``, ``ldm.params.*``,
``ldm.params.unet_config.params.*``) so its config files load unchanged. The resolved config
is saved beside every run and inside every model file, so ``reconstruct.py`` rebuilds the
model and schedule from the checkpoint alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_ood.utils.errors import ConfigError
from ddpm_ood.diffusion.ddpm import BETA_SCHEDULES, DDPMSchedule
from ddpm_ood.models.unet import UNet

CONFIG_DIR = Path(__file__).parents[1] / "configs" / "diffusion"  # ddpm_ood/configs (src/configs links there)
UNET_KEYS = (
    "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
    "num_heads", "dropout", "use_scale_shift_norm", "resblock_updown", "conv_resample", "num_groups", "norm_eps",
    "dims",
)


def default_config_file(is_grayscale: bool) -> Path:
    return CONFIG_DIR / ("diffusion_grayscale.yaml" if is_grayscale else "diffusion_colour.yaml")


UNET = "ldm.params.unet_config.params."
_positive_int = ("a positive integer", lambda v: _is_int(v) and v >= 1)
_bool = ("true or false", lambda v: isinstance(v, bool))
_int_list = ("a list of positive integers", lambda v: isinstance(v, (list, tuple)) and len(v) > 0
             and all(_is_int(x) and x >= 1 for x in v))
_unit_open = ("a number strictly between 0 and 1", lambda v: _is_number(v) and 0 < v < 1)
# Every key a config may set: (what it must be, check). Overrides naming any other key are
# refused (a training flag given without its "--", a typo); values are checked before use.
SCHEMA = {
    "ldm.base_lr": ("a number above 0", lambda v: _is_number(v) and v > 0),
    "ldm.params.timesteps": ("an integer of at least 2", lambda v: _is_int(v) and v >= 2),
    "ldm.params.beta_schedule": (f"one of {BETA_SCHEDULES}", lambda v: v in BETA_SCHEDULES),
    "ldm.params.linear_start": _unit_open,
    "ldm.params.linear_end": _unit_open,
    "ldm.params.loss_type": ("'l2' (the only loss implemented)", lambda v: v == "l2"),
    "ldm.params.parameterization": ("'eps' (the only parameterisation implemented)", lambda v: v == "eps"),
    UNET + "image_size": ("an integer (informational; the data sets the size)", lambda v: _is_int(v)),
    # 1 or 3 for images (check_channels); a latent model's are its first stage's latent channels
    UNET + "in_channels": _positive_int,
    UNET + "out_channels": _positive_int,
    UNET + "dims": ("2 (images) or 3 (volumes)", lambda v: v in (2, 3) and _is_int(v)),
    UNET + "model_channels": _positive_int,
    UNET + "channel_mult": _int_list,
    UNET + "num_res_blocks": _positive_int,
    UNET + "attention_resolutions": ("a list of positive integers (downsampling factors)",
                                     lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) and x >= 1 for x in v)),
    UNET + "num_heads": _positive_int,
    UNET + "dropout": ("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    UNET + "use_scale_shift_norm": _bool,
    UNET + "resblock_updown": _bool,
    UNET + "conv_resample": _bool,
    UNET + "num_groups": _positive_int,
    UNET + "norm_eps": ("a number above 0", lambda v: _is_number(v) and v > 0),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML config, merge ``a.b.c=value`` overrides and check it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist; see src/configs/diffusion/ for examples.")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ConfigError(f"Cannot read config {path}: {err}") from err
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep:
            raise ConfigError(f"Config override {override!r} is not KEY=VALUE (e.g. {UNET}model_channels=128).")
        key = key.strip()
        if key not in SCHEMA and OmegaConf.select(cfg, key, default=None) is None:
            hint = f" (a training flag? write --{key}=...)" if "." not in key else ""
            raise ConfigError(f"Config override {override!r}: unknown key {key!r}{hint}. Known keys: "
                              f"{', '.join(SCHEMA)}.")
    try:
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"Cannot apply the overrides {list(overrides)} to {path}: {err}") from err
    check_config(cfg, source=f"{path}{' with overrides ' + ' '.join(overrides) if overrides else ''}")
    return cfg


def check_config(cfg: DictConfig, source: str = "config") -> None:
    """Every known key has a valid value, and the UNet can be built from them."""
    params = cfg.get("ldm", {}).get("params")
    if params is None or "unet_config" not in params or "params" not in params.unet_config:
        raise ConfigError(f"{source} has no ldm.params.unet_config section; see src/configs/diffusion/.")
    unknown = set(params.unet_config.params) - set(UNET_KEYS) - {"image_size"}
    if unknown:
        raise ConfigError(f"{source}: unknown UNet setting(s) {sorted(unknown)}; known: {list(UNET_KEYS)}.")
    for key, (expected, is_valid) in SCHEMA.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if not is_valid(value):
            raise ConfigError(f"{source}: {key} = {value!r} must be {expected}.")
    if params.get("linear_start", 0.0015) >= params.get("linear_end", 0.0195):
        raise ConfigError(f"{source}: ldm.params.linear_start ({params.linear_start}) must be below "
                          f"linear_end ({params.linear_end}).")
    unet = params.unet_config.params
    channels = [unet.get("model_channels", 256) * m for m in unet.get("channel_mult", [1, 2, 3])]
    groups, heads = unet.get("num_groups", 32), unet.get("num_heads", 1)
    if any(c % groups for c in channels):
        raise ConfigError(f"{source}: {UNET}num_groups = {groups} must divide the channel counts {channels} "
                          "(model_channels x each channel_mult).")
    if any(c % heads for c in channels):
        raise ConfigError(f"{source}: {UNET}num_heads = {heads} must divide the channel counts {channels}.")
    if unet.get("out_channels", 1) != unet.get("in_channels", 1):
        raise ConfigError(f"{source}: out_channels must equal in_channels (the UNet predicts the noise of the input).")


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts, with both values."""
    differences = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences


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


def warn_if_config_differs(config_file: Path, stored: dict, model_file) -> None:
    """The model file's config wins; say so when the config given on the command line disagrees."""
    import logging

    try:
        given = to_container(load_config(config_file)).get("ldm", {}).get("params", {})
    except ConfigError as err:  # the model file's config is used: a file that is never used stops nothing
        logging.getLogger("ddpm_ood").warning("--config_diffusion_file is not used (the config stored in %s is): %s",
                                              model_file, err)
        return
    stored_params = stored.get("ldm", {}).get("params", {})
    differing = sorted(k for k in set(given) | set(stored_params) if given.get(k) != stored_params.get(k))
    if differing:
        logging.getLogger("ddpm_ood").warning("%s differs from the config stored in %s (%s); using the stored one.",
                                              config_file, model_file, ", ".join(differing))
