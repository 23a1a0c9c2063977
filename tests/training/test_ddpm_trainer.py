"""train.py's DDPM training (ddpm_ood.training.ddpm): model files are never trained over, a finished run says so."""
from __future__ import annotations

import pytest
import torch

import train
from ddpm_ood.utils.errors import CheckpointError, ConfigError
from helpers.pipeline import tiny_train_args, train_tiny


@pytest.mark.slow
def test_model_files_without_a_checkpoint_are_never_trained_over(scored_copy):
    out, paths = scored_copy
    final = out / "m" / "final_model.pth"
    before = {p.name: p.read_bytes() for p in (out / "m").glob("*_model.pth")}
    for checkpoint in (out / "m").glob("checkpoint*.pth"):
        checkpoint.unlink()  # deleted to save disk
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume from.*--init_weights=final_model.pth"):
        train.main(tiny_train_args(out, paths, epochs=2))
    assert {p.name: p.read_bytes() for p in (out / "m").glob("*_model.pth")} == before
    # Going on from its weights: a tiny learning rate keeps them (a fresh start would not).
    old = torch.load(final, weights_only=True)["model"]
    train.main(tiny_train_args(out, paths, "--init_weights=final_model.pth", "--lr=1e-12", epochs=1))
    new = torch.load(final, weights_only=True)["model"]
    assert all(torch.allclose(old[k], new[k], atol=1e-6) for k in old)
    with pytest.raises(ConfigError, match="has a checkpoint to resume from"):
        train.main(tiny_train_args(out, paths, "--init_weights=final_model.pth", epochs=2))


def test_a_finished_run_says_it_is_complete(tmp_path, synthetic_splits, caplog):
    train_tiny(tmp_path, synthetic_splits)
    before = (tmp_path / "m" / "checkpoint.pth").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="ddpm_ood"):
        summary = train_tiny(tmp_path, synthetic_splits)
    assert summary.get("already_complete") and "already complete" in caplog.text and "Resuming" not in caplog.text
    assert (tmp_path / "m" / "checkpoint.pth").stat().st_mtime_ns == before


def test_a_collapsed_first_stage_is_refused_however_its_one_latent_varies_in_space():
    """Every image encoded to one latent that varies in space: the old guard (the standard deviation
    over the whole tensor) let it through, and the tables printed AUROC 100."""
    from ddpm_ood.training.first_stage import latent_scale
    from ddpm_ood.utils.errors import ConfigError

    one = torch.randn(1, 3, 7, 7)
    with pytest.raises(ConfigError, match="encodes every one of the 5 training images to the same latent"):
        latent_scale(one.repeat(5, 1, 1, 1))
    varied = torch.randn(5, 3, 7, 7)
    assert latent_scale(varied) == pytest.approx(1 / float(varied.double().std()))
    with pytest.raises(ConfigError):
        latent_scale(torch.zeros(4, 3, 7, 7))


def test_a_simplex_models_training_noise_is_simplex_noise_seeded_by_the_step():
    """With --simplex_noise the step's noise is a simplex field per image at its own timestep, drawn from the
    step's generator right after the timesteps (so a resumed or distributed run draws the same)."""
    from ddpm_ood.diffusion.noise import SimplexNoise
    from ddpm_ood.training.ddpm import step_noise, step_seed

    kind = SimplexNoise(3, 0.7, 8.0)
    t, noise = step_noise(5, 12, 4, (1, 12, 12), 1000, torch.device("cpu"), kind)
    generator = torch.Generator().manual_seed(step_seed(5, 12))
    expected_t = torch.randint(0, 1000, (4,), generator=generator)
    assert torch.equal(t, expected_t)
    torch.testing.assert_close(noise, kind.sample((4, 1, 12, 12), expected_t, generator))
    _, gaussian = step_noise(5, 12, 4, (1, 12, 12), 1000, torch.device("cpu"))
    assert abs(float(gaussian.std()) - 1) < 0.2 and not torch.allclose(gaussian, noise)
