"""Configs: one YAML file (OmegaConf) plus ``key=value`` command-line overrides.

The layout is the original code's (``ldm.base_lr``, ``ldm.params.*``,
``ldm.params.unet_config.params.*``) so its config files load unchanged. The resolved config
is saved beside every run and inside every model file, so ``reconstruct.py`` rebuilds the
model and schedule from the checkpoint alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_ood.utils.errors import ConfigError
from ddpm_ood.diffusion.ddpm import BETA_SCHEDULES, PREDICTION_NAMES, DDPMSchedule
from ddpm_ood.diffusion.noise import noise_of
from ddpm_ood.models.unet import UNet

CONFIG_DIR = Path(__file__).parents[1] / "configs" / "diffusion"  # ddpm_ood/configs (src/configs links there)
UNET_KEYS = (
    "in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
    "num_heads", "dropout", "use_scale_shift_norm", "resblock_updown", "conv_resample", "num_groups", "norm_eps",
    "dims",
)


# MONAI's DiffusionModelUNet, the network of ddpm-ood's later code (``--model_type small|big``): a config's
# ``unet_config.target``; its ``params`` are the network's own arguments.
MONAI_UNET = "monai.networks.nets.DiffusionModelUNet"
MONAI_UNET_KEYS = ("spatial_dims", "in_channels", "out_channels", "channels", "attention_levels", "num_res_blocks",
                   "num_head_channels", "norm_num_groups", "norm_eps", "resblock_updown", "with_conditioning",
                   "transformer_num_layers", "upcast_attention", "include_fc", "use_combined_linear")
# ddpm-ood's two UNets (src/trainers/base.py of its later versions), by --model_type.
DDPM_OOD_UNETS = {
    "small": {"channels": [128, 256, 256], "attention_levels": [False, False, True], "num_res_blocks": 1,
              "num_head_channels": 256},
    "big": {"channels": [256, 512, 768], "attention_levels": [True, True, True], "num_res_blocks": 2,
            "num_head_channels": 256},
}


def is_monai_unet(cfg) -> bool:
    return OmegaConf.select(OmegaConf.create(cfg), "ldm.params.unet_config.target", default=None) == MONAI_UNET


def monai_unet_config(model_type: str, in_channels: int, spatial_dims: int = 2) -> dict:
    """The ``unet_config`` of ddpm-ood's ``--model_type`` network (MONAI's DiffusionModelUNet)."""
    if model_type not in DDPM_OOD_UNETS:
        raise ConfigError(f"--model_type {model_type!r}: ddpm-ood builds 'small' or 'big'.")
    return {"target": MONAI_UNET, "params": {"spatial_dims": spatial_dims, "in_channels": in_channels,
                                             "out_channels": in_channels, "with_conditioning": False,
                                             **DDPM_OOD_UNETS[model_type]}}


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
    "ldm.params.parameterization": (f"one of {tuple(PREDICTION_NAMES)} (what the network predicts: the noise, v or "
                                    "x0)", lambda v: v in PREDICTION_NAMES),
    "ldm.params.snr_shift": ("a number above 0 (1: the schedule as it is)", lambda v: _is_number(v) and v > 0),
    "ldm.params.b_scale": ("a number above 0 (1: the data as it is)", lambda v: _is_number(v) and v > 0),
    "ldm.params.noise": ("gaussian (the method's) or simplex (AnoDDPM's)", lambda v: v in ("gaussian", "simplex")),
    "ldm.params.simplex.octaves": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "ldm.params.simplex.persistence": ("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    "ldm.params.simplex.frequency": ("a number above 0 (a wavelength in pixels)", lambda v: _is_number(v) and v > 0),
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


def load_config(path: str | Path, overrides: Sequence[str] = (), model_type: str | None = None,
                spatial_dims: int = 2) -> DictConfig:
    """Read a YAML config, swap in ddpm-ood's ``model_type`` network if asked, merge ``a.b.c=value``
    overrides and check it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist; see src/configs/diffusion/ for examples.")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, ValueError, OSError) as err:
        raise ConfigError(f"Cannot read config {path}: {err}") from err
    if model_type is not None:
        channels = OmegaConf.select(cfg, UNET + "in_channels", default=1)
        cfg.ldm.params.unet_config = monai_unet_config(model_type, int(channels), spatial_dims)
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep:
            raise ConfigError(f"Config override {override!r} is not KEY=VALUE (e.g. {UNET}model_channels=128).")
        key = key.strip()
        monai_key = is_monai_unet(cfg) and key.startswith(UNET) and key[len(UNET):] in MONAI_UNET_KEYS
        if key not in SCHEMA and not monai_key and OmegaConf.select(cfg, key, default=None) is None:
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
    if is_monai_unet(cfg):
        check_monai_unet(params.unet_config.params, source)
        return check_schedule_keys(cfg, source)
    target = params.unet_config.get("target")
    if target is not None and "openaimodel" not in str(target):
        raise ConfigError(f"{source}: unet_config.target {target!r} is neither latent-diffusion's UNet (no target, "
                          f"the default) nor {MONAI_UNET} (--model_type small|big).")
    unknown = set(params.unet_config.params) - set(UNET_KEYS) - {"image_size"}
    if unknown:
        raise ConfigError(f"{source}: unknown UNet setting(s) {sorted(unknown)}; known: {list(UNET_KEYS)}.")
    check_schedule_keys(cfg, source)
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


def check_monai_unet(unet, source: str) -> None:
    """A MONAI DiffusionModelUNet's arguments: known names, and a network MONAI agrees to build."""
    unet = OmegaConf.to_container(unet, resolve=True) if isinstance(unet, DictConfig) else dict(unet)
    unknown = set(unet) - set(MONAI_UNET_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown DiffusionModelUNet setting(s) {sorted(unknown)}; known: "
                          f"{list(MONAI_UNET_KEYS)}.")
    if unet.get("in_channels") != unet.get("out_channels"):
        raise ConfigError(f"{source}: out_channels must equal in_channels (the UNet predicts the noise of the input).")
    if unet.get("spatial_dims") not in (2, 3):
        raise ConfigError(f"{source}: {UNET}spatial_dims = {unet.get('spatial_dims')!r} must be 2 or 3.")
    build_monai_unet(unet, source)


def build_monai_unet(unet: dict, source: str = "config") -> torch.nn.Module:
    from monai.networks.nets import DiffusionModelUNet

    try:
        return DiffusionModelUNet(**unet)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"{source}: MONAI cannot build a DiffusionModelUNet from {unet} ({err}).") from None


def check_schedule_keys(cfg: DictConfig, source: str) -> None:
    """Every known key has a valid value, and the betas rise."""
    params = cfg.ldm.params
    for key, (expected, is_valid) in SCHEMA.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if not is_valid(value):
            raise ConfigError(f"{source}: {key} = {value!r} must be {expected}.")
    if params.get("linear_start", 0.0015) >= params.get("linear_end", 0.0195):
        raise ConfigError(f"{source}: ldm.params.linear_start ({params.get('linear_start', 0.0015)}) must be below "
                          f"linear_end ({params.get('linear_end', 0.0195)}).")


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
        snr_shift=params.get("snr_shift", 1.0),
        prediction=params.get("parameterization", "eps"),
        noise=noise_of({"kind": params.get("noise", "gaussian"), **params.get("simplex", {})}),
    )


def build_unet(cfg: DictConfig | dict) -> torch.nn.Module:
    """The config's network, called as ``unet(x, t)``: our UNet, or MONAI's DiffusionModelUNet (its output is
    what ``ldm.params.parameterization`` says: the noise, v or x0)."""
    unet_params = OmegaConf.to_container(OmegaConf.create(cfg).ldm.params.unet_config.params, resolve=True)
    if is_monai_unet(cfg):
        return build_monai_unet(unet_params)
    return UNet(**{k: v for k, v in unet_params.items() if k in UNET_KEYS})


def b_scale(cfg: DictConfig | dict) -> float:
    """The factor the data is multiplied by before noising (ddpm-ood's ``--b_scale``; 1: none)."""
    return float(OmegaConf.select(OmegaConf.create(cfg), "ldm.params.b_scale", default=1.0))


def network_record(cfg: DictConfig | dict) -> dict:
    """What a model's identity takes of its network's config: the UNet's parameters (and MONAI's target)."""
    unet_config = OmegaConf.to_container(OmegaConf.create(cfg).ldm.params.unet_config, resolve=True)
    record = dict(unet_config.get("params", {}))
    return {**record, "target": MONAI_UNET} if unet_config.get("target") == MONAI_UNET else record


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
