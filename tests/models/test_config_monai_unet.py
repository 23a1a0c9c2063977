"""--model_type small|big: ddpm-ood's MONAI DiffusionModelUNet as the trained network, built from a config."""
from __future__ import annotations

import argparse

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet

from conftest import TINY_CONFIG
from ddpm_ood.models.config import (DDPM_OOD_UNETS, MONAI_UNET, build_unet, is_monai_unet, load_config,
                                    network_record)
from ddpm_ood.utils.errors import ConfigError


@pytest.mark.parametrize("dims, shape", [(2, (2, 1, 16, 16)), (3, (1, 1, 8, 8, 8))])
def test_model_type_small_is_monais_unet_as_ddpm_ood_builds_it(dims, shape):
    """The network equals MONAI's forward pass on the same weights, the UNet built with ddpm-ood's own
    arguments for --model_type small (src/trainers/base.py of its later versions)."""
    cfg = load_config(TINY_CONFIG, model_type="small", spatial_dims=dims)
    assert is_monai_unet(cfg) and network_record(cfg)["target"] == MONAI_UNET
    torch.manual_seed(0)
    ours = build_unet(cfg).eval()
    theirs = DiffusionModelUNet(spatial_dims=dims, in_channels=1, out_channels=1, channels=(128, 256, 256),
                                attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=256,
                                with_conditioning=False).eval()
    theirs.load_state_dict(ours.state_dict())  # strict: the same architecture, parameter for parameter
    x, t = torch.rand(shape), torch.tensor([7, 600][:shape[0]])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), theirs(x, timesteps=t), rtol=0, atol=1e-6)


def test_model_type_big_has_ddpm_oods_configuration():
    params = network_record(load_config(TINY_CONFIG, model_type="big"))
    assert {k: params[k] for k in DDPM_OOD_UNETS["big"]} == {
        "channels": [256, 512, 768], "attention_levels": [True, True, True], "num_res_blocks": 2,
        "num_head_channels": 256}


def test_a_monai_unets_parameters_can_be_overridden_and_are_checked():
    cfg = load_config(TINY_CONFIG, ["ldm.params.unet_config.params.channels=[8,16,16]",
                                    "ldm.params.unet_config.params.num_head_channels=16",
                                    "ldm.params.unet_config.params.norm_num_groups=8"], model_type="small")
    assert sum(p.numel() for p in build_unet(cfg).parameters()) < 200_000
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TINY_CONFIG, ["ldm.params.unet_config.params.model_channel=8"], model_type="small")
    with pytest.raises(ConfigError, match="MONAI cannot build a DiffusionModelUNet"):
        load_config(TINY_CONFIG, ["ldm.params.unet_config.params.channels=[8,16,16]"], model_type="small")


def test_the_parameterisation_and_shifts_are_checked():
    with pytest.raises(ConfigError, match="parameterization = 'score' must be one of"):
        load_config(TINY_CONFIG, ["ldm.params.parameterization=score"])
    with pytest.raises(ConfigError, match="b_scale = 0 must be a number above 0"):
        load_config(TINY_CONFIG, ["ldm.params.b_scale=0"])
    with pytest.raises(ConfigError, match="snr_shift = -1"):
        load_config(TINY_CONFIG, ["ldm.params.snr_shift=-1"])


def test_the_command_line_refuses_the_ambiguous_linear(capsys):
    import re

    import train

    base = ["--output_dir=o", "--model_name=m", "--training_ids=a.csv", "--validation_ids=b.csv"]
    for flag, message in (("--beta_schedule=linear", "names two schedules"),):
        with pytest.raises(SystemExit):
            train.parse_args(base + [flag])
        assert re.search(message, capsys.readouterr().err)
    args = train.parse_args(base + ["--beta_schedule=scaled_linear_beta", "--prediction_type=v_prediction",
                                    "--b_scale=2", "--snr_shift=0.5", "--beta_start=0.001", "--beta_end=0.02",
                                    "--simplex_noise=1"])
    from ddpm_ood.cli import diffusion_overrides

    assert diffusion_overrides(args) == [
        "ldm.params.beta_schedule=scaled_linear_beta", "ldm.params.linear_start=0.001", "ldm.params.linear_end=0.02",
        "ldm.params.b_scale=2.0", "ldm.params.snr_shift=0.5", "ldm.params.noise=simplex",
        "ldm.params.parameterization=v"]
    assert diffusion_overrides(train.parse_args(base)) == []  # the seed's command lines: the config as it is


def test_the_ambiguous_name_is_explained():
    from ddpm_ood.cli import beta_schedule_name

    with pytest.raises(argparse.ArgumentTypeError, match="linear in sqrt\\(beta\\) in this project's .* linear in beta"):
        beta_schedule_name("linear")
