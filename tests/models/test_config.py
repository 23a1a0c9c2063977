"""YAML configs (ddpm_ood.models.config): overrides checked against the schema, a trained run keeps its own."""
from __future__ import annotations

import re

import pytest

from conftest import TINY_CONFIG
from ddpm_ood.utils.errors import ConfigError
from helpers.pipeline import run_script, train_tiny


@pytest.mark.parametrize("override,key", [("ldm.params.unet_config.params.model_channels=16", "model_channels"),
                                          ("ldm.params.linear_end=0.02", "linear_end")])
def test_a_trained_run_refuses_another_config_and_keeps_its_own(tmp_path, synthetic_splits, override, key):
    train_tiny(tmp_path, synthetic_splits)
    stored = (tmp_path / "m" / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=rf"{key}: .* -> .*new --model_name"):
        train_tiny(tmp_path, synthetic_splits, "--n_epochs=2", override)
    assert (tmp_path / "m" / "config.yaml").read_bytes() == stored


@pytest.mark.slow
@pytest.mark.parametrize("override,match", [
    ("n_epochs=3", r"unknown key 'n_epochs' \(a training flag\? write --n_epochs"),
    ("ldm.params.unet_config.params.model_channels=abc", "model_channels = 'abc' must be a positive integer"),
    ("ldm.params.timesteps=-5", "timesteps = -5 must be an integer of at least 2"),
    ("ldm.params.unet_config.params.num_groups=3", "num_groups = 3 must divide"),
    ("ldm.params.unet_config.params.chanel_mult=[1]", "unknown key"),
])
def test_config_overrides_are_checked_against_the_schema(tmp_path, override, match):
    result = run_script("train.py", f"--output_dir={tmp_path}", "--model_name=m", "--training_ids=a.csv",
                        "--validation_ids=b.csv", f"--config_diffusion_file={TINY_CONFIG}", override)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.search(match, result.stderr), result.stderr
    assert not (tmp_path / "m").exists()  # refused before anything was written
