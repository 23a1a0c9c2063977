"""The scripts' flags (ddpm_ood.cli): numbers checked by the parser, help that says what a flag means and loads no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

import ood_detection
import reconstruct
import train
from conftest import ROOT
from helpers.pipeline import run_script


def test_help_says_where_a_relative_eval_checkpoint_is(capsys):
    with pytest.raises(SystemExit):
        reconstruct.parse_args(["--help"])
    assert "relative to the run's folder" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("flag,value", [
    ("--lr", "0"), ("--lr", "-1e-4"), ("--lr", "nan"), ("--ema_decay", "1"), ("--ema_decay", "-0.1"),
    ("--num_sample_images", "-1"), ("--seed", "-1"), ("--device", "gpu"), ("--max_minutes", "-5"),
    ("--num_workers", "-2"), ("--first_n", "0"),
])
def test_training_numbers_are_checked_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as err:
        train.parse_args(["--output_dir=o", "--model_name=m", "--training_ids=a", "--validation_ids=b",
                          f"{flag}={value}"])
    assert err.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("script,flag,value", [
    (reconstruct, "--seed", "-3"), (reconstruct, "--device", "cuda:x"), (reconstruct, "--num_workers", "-1"),
    (ood_detection, "--max_t", "0"),
])
def test_scoring_numbers_are_checked_by_the_parser(script, flag, value, capsys):
    with pytest.raises(SystemExit) as err:
        script.parse_args(["--output_dir=o", "--model_name=m", f"{flag}={value}"])
    assert err.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train", "train_ddpm", "train_vqvae", "reconstruct", "ood_detection", "get_datasets"])
def test_help_does_not_import_torch(script):
    code = (f"import sys; import {script}\n"
            f"try:\n    {script}.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'pandas', 'sklearn') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ["train", "train_vqvae"])
def test_every_setting_is_one_flag_of_its_declared_type_and_default(script):
    """add_settings makes one flag per setting (TrainSettings, AutoencoderSettings): its default is the
    declared one, and a value its kind refuses is refused by the parser."""
    import argparse
    import importlib

    from ddpm_ood.cli import SETTING_TYPES, add_settings
    from ddpm_ood.training.settings import AutoencoderSettings, TrainSettings

    settings = TrainSettings if script == "train" else AutoencoderSettings
    parser = argparse.ArgumentParser()
    add_settings(parser, settings)
    defaults = vars(parser.parse_args([]))
    assert set(defaults) == {f.name for f in settings.flags()}
    for field in settings.flags():
        assert defaults[field.name] == field.default
        kind = field.metadata["kind"]
        assert kind in SETTING_TYPES or kind in ("switch", "precision"), kind
        if kind in ("positive_int", "positive_float", "seed", "non_negative_int", "non_negative_float"):
            with pytest.raises(SystemExit):
                parser.parse_args([f"--{field.name}=-1"])
    module = importlib.import_module(script)
    base = ["--output_dir=o", "--model_name=m", "--training_ids=a", "--validation_ids=b"]
    assert {f.name for f in settings.flags()} <= set(vars(module.parse_args(base)))


@pytest.mark.parametrize("value,ok", [("0", True), ("1", False), ("2", True), ("-1", False), ("all", True),
                                      ("ALL", True), ("some", False)])
def test_save_maps_is_zero_all_or_at_least_two(value, ok, capsys):
    """One map cannot be z-scored on the validation set's (the help said N >= 2; the parser took 1); 'all' keeps
    every image's, more than any set holds."""
    from ddpm_ood.cli import EVERY_IMAGE

    args = ["--output_dir=o", "--model_name=m", f"--save_maps={value}"]
    if ok:
        expected = EVERY_IMAGE if value.lower() == "all" else int(value)
        assert reconstruct.parse_args(args).save_maps == expected
        assert min(expected, 10**9) == (10**9 if expected == EVERY_IMAGE else expected)
    else:
        with pytest.raises(SystemExit):
            reconstruct.parse_args(args)
        assert "expected 0 (no maps), 'all', or at least 2 images" in capsys.readouterr().err


def test_train_ddpm_is_train_under_its_later_name():
    """ddpm-ood's later README runs train_ddpm.py: the same program (its help says so)."""
    result = run_script("train_ddpm.py", "--help")
    assert result.returncode == 0 and "usage: train_ddpm.py" in result.stdout
    assert "train_ddpm.py`` (ddpm-ood's later name) is this program" in result.stdout
    import train_ddpm

    assert train_ddpm.main is train.main and train_ddpm.parse_args is train.parse_args


@pytest.mark.parametrize("script", ["train", "train_vqvae", "reconstruct"])
def test_cache_data_is_accepted_and_changes_nothing(script):
    import importlib

    module = importlib.import_module(script)
    base = ["--output_dir=o", "--model_name=m"] + (["--training_ids=a", "--validation_ids=b"] if "train" in script
                                                   else [])
    with_flag, without = vars(module.parse_args(base + ["--cache_data=1"])), vars(module.parse_args(base))
    assert with_flag.pop("cache_data") == 1 and without.pop("cache_data") is None and with_flag == without


def test_vqvae_learning_rate_is_lr():
    import train_vqvae

    base = ["--output_dir=o", "--model_name=m", "--training_ids=a", "--validation_ids=b"]
    assert train_vqvae.parse_args(base + ["--vqvae_learning_rate=3e-4"]).lr == 3e-4
    assert train_vqvae.parse_args(base).lr == 1e-4
