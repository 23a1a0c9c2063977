"""Every training flag does something: each test shows a flag's effect."""
from __future__ import annotations

import pytest
import torch

import train
from conftest import TINY_CONFIG


def run(tmp_path, splits, name, *extra):
    args = train.parse_args([
        f"--output_dir={tmp_path}", f"--model_name={name}", f"--training_ids={splits['train']}",
        f"--validation_ids={splits['val']}", f"--config_diffusion_file={TINY_CONFIG}", "--n_epochs=3",
        "--batch_size=8", "--num_sample_images=0", "--num_workers=0", *extra])
    summary = train.main(args)
    state = torch.load(tmp_path / name / "checkpoint.pth", weights_only=True)
    return summary, state


def weights(state):
    return torch.cat([v.flatten().float() for v in state["model"].values()])


def test_first_n_batch_size_and_max_minutes(tmp_path, synthetic_splits):
    summary, _ = run(tmp_path, synthetic_splits, "a", "--first_n=16")
    assert summary["steps"] == 3 * 2  # 16 images in batches of 8, three epochs
    summary, state = run(tmp_path, synthetic_splits, "b", "--max_minutes=0")
    # Out of time: stops at the first step, not the end of the epoch, with a checkpoint there.
    assert summary["steps"] == 1 and summary["epochs"] == 0
    assert state["epoch"] == 0 and state["batch_in_epoch"] == 1 and state["step"] == 1
    assert (tmp_path / "b" / "best_model.pth").is_file() and (tmp_path / "b" / "final_model.pth").is_file()
    summary, state = run(tmp_path, synthetic_splits, "b", "--max_minutes=0")  # a re-run goes on from there
    assert summary["steps"] == 2 and state["batch_in_epoch"] == 2


@pytest.mark.slow
def test_lr_seed_and_checkpoint_every(tmp_path, synthetic_splits):
    _, frozen = run(tmp_path, synthetic_splits, "frozen", "--lr=1e-30")
    torch.manual_seed(0)
    from ddpm_ood.models.config import build_unet, load_config
    initial = build_unet(load_config(TINY_CONFIG)).state_dict()
    torch.testing.assert_close(weights(frozen), weights({"model": initial}), atol=1e-6, rtol=0)
    _, seed0 = run(tmp_path, synthetic_splits, "s0")
    _, seed1 = run(tmp_path, synthetic_splits, "s1", "--seed=1")
    assert not torch.equal(weights(seed0), weights(seed1))
    run(tmp_path, synthetic_splits, "every2", "--checkpoint_every=2")
    previous = torch.load(tmp_path / "every2" / "checkpoint_prev.pth", weights_only=True)
    assert previous["epoch"] == 2  # checkpoint.pth every epoch (ddpm-ood's meaning: snapshots are extra)
    snapshots = sorted(p.name for p in (tmp_path / "every2").glob("checkpoint_[0-9]*.pth"))
    assert snapshots == ["checkpoint_2.pth"]  # 3 epochs, a snapshot every 2
    kept = torch.load(tmp_path / "every2" / "checkpoint_2.pth", weights_only=True)
    torch.testing.assert_close(kept["model"], previous["model"])


@pytest.mark.slow
def test_ema_precision_and_channels_last(tmp_path, synthetic_splits):
    _, plain = run(tmp_path, synthetic_splits, "plain")
    _, ema = run(tmp_path, synthetic_splits, "ema", "--ema_decay=0.5")
    assert plain["ema_model"] is None and ema["ema_model"] is not None
    best = torch.load(tmp_path / "ema" / "final_model.pth", weights_only=True)
    assert best["ema"] and weights({"model": best["model"]}).ne(weights(ema)).any()  # scoring uses the EMA
    summary, _ = run(tmp_path, synthetic_splits, "bf16", "--precision=bf16")
    assert summary["best_val_loss"] < 2
    _, last = run(tmp_path, synthetic_splits, "cl", "--channels_last")
    torch.testing.assert_close(weights(last), weights(plain), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_compile_trains_like_eager_with_one_graph(tmp_path, synthetic_splits, monkeypatch):
    """--compile gives the eager run's weights, and the epoch's smaller last batch (24 images in
    batches of 10) reuses the compiled graph: dynamo's eager backend keeps this fast, and
    error_on_recompile fails on any second compilation."""
    import functools

    import torch._dynamo

    _, eager = run(tmp_path, synthetic_splits, "eager", "--batch_size=10")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        _, compiled = run(tmp_path, synthetic_splits, "compiled", "--batch_size=10", "--compile")
    torch._dynamo.reset()
    torch.testing.assert_close(weights(compiled), weights(eager), atol=1e-5, rtol=1e-4)


def test_ema_update_follows_the_warm_up_formula():
    from ddpm_ood.training.ddpm import update_ema

    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.data.zero_(), p.data.fill_(1.0)
    expected = 0.0
    for step in range(4):
        decay = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25, 0.31: the warm-up, below 0.5
        expected = decay * expected + (1 - decay) * 1.0
        update_ema(ema, model, 0.5, step)
        for p_ema in ema.parameters():
            torch.testing.assert_close(p_ema, torch.full_like(p_ema, expected))
    update_ema(ema, model, 0.5, 1000)  # past the warm-up the decay is the target
    for p_ema in ema.parameters():
        torch.testing.assert_close(p_ema, torch.full_like(p_ema, 0.5 * expected + 0.5))



@pytest.mark.slow
def test_lr_given_on_resume_is_applied_and_kept(tmp_path, synthetic_splits):
    run(tmp_path, synthetic_splits, "lr", "--lr=1e-3")
    args = ["--n_epochs=4", "--lr=1e-30"]
    summary = train.main(train.parse_args([
        f"--output_dir={tmp_path}", "--model_name=lr", f"--training_ids={synthetic_splits['train']}",
        f"--validation_ids={synthetic_splits['val']}", f"--config_diffusion_file={TINY_CONFIG}", "--batch_size=8",
        "--num_sample_images=0", "--num_workers=0", *args]))
    state = torch.load(tmp_path / "lr" / "checkpoint.pth", weights_only=True)
    assert summary["epochs"] == 4 and state["optimizer"]["param_groups"][0]["lr"] == 1e-30
    assert state["settings"]["lr"] == 1e-30
    # Without --lr a resumed run keeps its own rate, not the config's default.
    train.main(train.parse_args([
        f"--output_dir={tmp_path}", "--model_name=lr", f"--training_ids={synthetic_splits['train']}",
        f"--validation_ids={synthetic_splits['val']}", f"--config_diffusion_file={TINY_CONFIG}", "--batch_size=8",
        "--num_sample_images=0", "--num_workers=0", "--n_epochs=5"]))
    assert torch.load(tmp_path / "lr" / "checkpoint.pth", weights_only=True)["settings"]["lr"] == 1e-30


def test_a_changed_batch_size_on_resume_is_refused(tmp_path, synthetic_splits):
    from ddpm_ood.utils.errors import ConfigError
    run(tmp_path, synthetic_splits, "bs")
    import pytest
    with pytest.raises(ConfigError, match="batch_size 8 -> 4"):
        train.main(train.parse_args([
            f"--output_dir={tmp_path}", "--model_name=bs", f"--training_ids={synthetic_splits['train']}",
            f"--validation_ids={synthetic_splits['val']}", f"--config_diffusion_file={TINY_CONFIG}", "--n_epochs=4",
            "--batch_size=4", "--num_sample_images=0", "--num_workers=0"]))


def test_ema_copy_is_made_after_the_checkpoints_weights_load(tmp_path):
    """A checkpoint without EMA weights (an older run) resumed with EMA on: the EMA starts from
    the loaded weights, not from the fresh model's random initialisation."""
    from ddpm_ood.models.config import build_schedule, build_unet, load_config
    from ddpm_ood.training.ddpm import TrainLoop
    from ddpm_ood.training.settings import TrainSettings
    from ddpm_ood.training.loop import rng_state

    cfg = load_config(TINY_CONFIG)
    torch.manual_seed(1)
    trained = build_unet(cfg)
    torch.manual_seed(2)
    fresh = build_unet(cfg)
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
    images = torch.rand(8, 1, 28, 28)
    loop = TrainLoop(fresh, build_schedule(cfg), images, images, TrainSettings(n_epochs=1, batch_size=4, lr=1e-3,
                     ema_decay=0.9), tmp_path, {}, torch.device("cpu"))
    loop.start({"model": trained.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {}, "ema_model": None,
                  "rng": rng_state(), "epoch": 1, "step": 2, "best_val_loss": 1.0})
    for ema, loaded in zip(loop.ema.parameters(), trained.parameters()):
        assert torch.equal(ema, loaded)
