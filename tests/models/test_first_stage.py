"""The latent pipeline (issue 25): train_vqvae.py, train.py --vqvae_checkpoint, reconstruct.py and
ood_detection.py through the first stage, the first stage inside the model's identity, and the bad
inputs the issue names."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("monai")

import ood_detection  # noqa: E402
import reconstruct  # noqa: E402
import train  # noqa: E402
import train_vqvae  # noqa: E402
from conftest import TINY_CONFIG, make_images, write_split  # noqa: E402
from ddpm_ood.models.first_stage import LatentSpace, read_first_stage  # noqa: E402
from ddpm_ood.models.loading import load_model  # noqa: E402
from ddpm_ood.utils.errors import UserError  # noqa: E402
from helpers.scripts import reconstruct_args  # noqa: E402

VQVAE_FLAGS = ["--vqvae_num_channels=[8,8]", "--vqvae_num_res_channels=[8,8]", "--vqvae_num_res_layers=1",
               "--vqvae_num_embeddings=16", "--vqvae_embedding_dim=2", "--perceptual_weight=0", "--batch_size=8",
               "--num_workers=0"]


def vqvae_args(out, splits, *extra):
    return train_vqvae.parse_args([f"--output_dir={out}", "--model_name=vq", f"--training_ids={splits['train']}",
                                   f"--validation_ids={splits['val']}", *VQVAE_FLAGS, *extra])


def latent_train_args(out, splits, *extra):
    return train.parse_args([
        f"--output_dir={out}", "--model_name=blobs", f"--training_ids={splits['train']}",
        f"--validation_ids={splits['val']}", "--is_grayscale=1", f"--config_diffusion_file={TINY_CONFIG}",
        "--n_epochs=1", "--batch_size=8", "--num_sample_images=2", "--sample_steps=3", "--num_workers=0",
        f"--vqvae_checkpoint={out / 'vq'}", *extra])


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """A first stage and a latent DDPM on it, trained once for the module (28x28 blobs -> 2x7x7 latents)."""
    root = tmp_path_factory.mktemp("latent")
    splits = root / "data_splits"
    splits = {
        "train": write_split(splits / "Blobs_train.csv", make_images(root / "bt", "b", 24, 0)),
        "val": write_split(splits / "Blobs_val.csv", make_images(root / "bv", "b", 8, 1)),
        "test": write_split(splits / "Blobs_test.csv", make_images(root / "bte", "b", 6, 2)),
        "ood": write_split(splits / "Stripes_test.csv", make_images(root / "st", "s", 6, 3, "stripes")),
    }
    out = root / "models"
    summary = train_vqvae.main(vqvae_args(out, splits, "--n_epochs=2"))
    assert summary["epochs"] == 2
    train.main(latent_train_args(out, splits))
    return out, splits


def test_first_stage_run_files_and_resume(latent_run):
    out, splits = latent_run
    run = out / "vq"
    for name in ("checkpoint.pth", "best_model.pth", "final_model.pth"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    record = read_first_stage(run)
    assert record["autoencoder"] == "vqvae" and record["image_shape"] == [1, 28, 28]
    assert record["data"]["training"]["n_images"] == 24
    # Re-running the finished command trains nothing more; other settings are refused.
    assert train_vqvae.main(vqvae_args(out, splits, "--n_epochs=2"))["epochs"] == 2
    with pytest.raises(UserError, match="trained otherwise.*batch_size"):
        train_vqvae.main(vqvae_args(out, splits, "--n_epochs=3", "--batch_size=4"))


def test_latent_space_round_trip_matches_monai(latent_run):
    """encode/decode are MONAI's own encode_stage_2_inputs/decode_stage_2_outputs, scaled and padded."""
    out, _ = latent_run
    record = read_first_stage(out / "vq")
    space = LatentSpace.from_record({**record, "scale": 2.5, "pad": 1}, "test")
    images = torch.rand(3, 1, 28, 28)
    z = space.encode(images)
    assert z.shape == (3, 2, 9, 9) and (z[..., 0, :] == 0).all() and (z[..., -1] == 0).all()
    expected = space.module.encode_stage_2_inputs(images) * 2.5
    torch.testing.assert_close(z[..., 1:-1, 1:-1], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(space.decode(z), space.module.decode_stage_2_outputs(expected / 2.5), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_latent_model_scores_in_image_space(latent_run, random_alexnet_home, capsys):
    out, splits = latent_run
    model_file = out / "blobs" / "best_model.pth"
    stored = torch.load(model_file, weights_only=True)
    assert stored["first_stage"]["scale"] > 0 and stored["image_shape"] == [2, 7, 7]
    unet = stored["config"]["ldm"]["params"]["unet_config"]["params"]
    assert unet["in_channels"] == unet["out_channels"] == 2

    model = load_model(model_file)
    assert model.image_space.shape == (1, 28, 28) and model.parts["first_stage"]["autoencoder"] == "vqvae"
    written = reconstruct.main(reconstruct_args(out, splits, "--detectors=recon,denoise"))
    assert {"val", "in", "Stripes"} <= set(written)
    val = pd.read_csv(out / "blobs" / "ood" / "results_val.csv")
    assert len(val) == 8 * 4 and (val["mse"] > 0).all() and val["perceptual_difference"].notna().all()
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=blobs"]))
    assert "AUC for blobs vs Stripes: " in capsys.readouterr().out


def test_identity_includes_the_first_stage(latent_run, tmp_path):
    out, _ = latent_run
    original = torch.load(out / "blobs" / "best_model.pth", weights_only=True)
    edited = {**original, "first_stage": {**original["first_stage"], "model": {
        k: v + 0.01 if v.is_floating_point() else v for k, v in original["first_stage"]["model"].items()}}}
    torch.save(edited, tmp_path / "edited.pth")
    a, b = load_model(out / "blobs" / "best_model.pth"), load_model(tmp_path / "edited.pth")
    assert a.identity != b.identity
    assert b.differs_from(a.manifest()) == "first stage, model space"


def test_bad_first_stages_are_refused_before_any_work(latent_run, tmp_path, caplog):
    out, splits = latent_run
    colour = {"train": write_split(tmp_path / "c.csv", make_images(tmp_path / "c", "c", 4, 0, shape=(32, 32))),
              "val": write_split(tmp_path / "cv.csv", make_images(tmp_path / "cv", "c", 2, 1, shape=(32, 32)))}
    for name, args, message in [
        ("other size", latent_train_args(out, {**splits, **colour}, "--model_name=x1"), "resize them"),
        ("a DDPM, not a first stage", latent_train_args(out, splits, "--model_name=x2",
                                                         f"--vqvae_checkpoint={out / 'blobs' / 'best_model.pth'}"),
         "not a first stage"),
        ("missing", latent_train_args(out, splits, "--model_name=x3", f"--vqvae_checkpoint={tmp_path / 'nope'}"),
         "does not exist"),
    ]:
        with pytest.raises(UserError, match=message):
            train.main(args)
        run = out / args.model_name  # nothing written (but the run's lock file)
        assert not run.exists() or [p.name for p in run.iterdir()] == [".train.lock"], name
    # A first stage trained on the test split: refused by reconstruct.py before anything is measured.
    ood = out / "blobs" / "ood"
    written = lambda: {p.name: p.stat().st_mtime_ns for p in ood.iterdir()} if ood.exists() else {}
    before = written()  # (whether or not an earlier test has measured this run)
    args = reconstruct_args(out, {**splits, "test": splits["train"]}, "--model_name=blobs", "--restart")
    with pytest.raises(UserError, match="first stage was trained on"):
        reconstruct.main(args)
    assert written() == before
    # The same images under another split file: refused when their pixels are read.
    copy = write_split(tmp_path / "Copy_test.csv", [p for p in pd.read_csv(splits["train"])["filename"]])
    with pytest.raises(UserError, match="holds exactly the images its first stage was trained on"):
        reconstruct.main(reconstruct_args(out, {**splits, "ood": copy}, "--run_val=0", "--run_in=0"))
    # Issue 33, case 16: shuffled, and with one more image, they were scored without a word
    trained = list(pd.read_csv(splits["train"])["filename"])
    shuffled = write_split(tmp_path / "Shuffled_test.csv", trained[::-1] + list(pd.read_csv(splits["test"])["filename"])[:1])
    with pytest.raises(UserError, match="24 of the 25 images of the test set .* are images its first stage was trained on"):
        reconstruct.main(reconstruct_args(out, {**splits, "ood": shuffled}, "--run_val=0", "--run_in=0"))
    one = write_split(tmp_path / "One_test.csv", trained[:1] + list(pd.read_csv(splits["test"])["filename"]))
    reconstruct.main(reconstruct_args(out, {**splits, "ood": one}, "--run_val=0", "--run_in=0"))  # scored, with a word
    assert "1 of the 7 images of" in caplog.text and "images the first stage was trained on" in caplog.text


def test_first_stage_stopped_by_max_minutes_keeps_a_model_and_resumes_where_it_stopped(latent_run):
    out, splits = latent_run
    first = train_vqvae.main(vqvae_args(out, splits, "--model_name=timed", "--n_epochs=5", "--max_minutes=0"))
    run = out / "timed"
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (0, 1, 1)  # stopped after its first step
    assert (run / "best_model.pth").is_file() and (run / "final_model.pth").is_file() and first["steps"] == 1
    again = train_vqvae.main(vqvae_args(out, splits, "--model_name=timed", "--n_epochs=1"))
    assert again["epochs"] == 1 and again["steps"] == 3  # 24 images in batches of 8: the epoch's other two steps


def test_a_latent_run_resumes_only_on_its_own_first_stage(latent_run):
    out, splits = latent_run
    train_vqvae.main(vqvae_args(out, splits, "--model_name=vq_other", "--n_epochs=1", "--seed=7"))
    for extra, words in (([f"--vqvae_checkpoint={out / 'vq_other'}"], "latents of another first stage"),
                         (["--latent_pad=1"], "another first stage \\(or --latent_pad\\)")):
        with pytest.raises(UserError, match=words):
            train.main(latent_train_args(out, splits, "--n_epochs=2", *extra))
    # Issue 33, wording: resumed without --vqvae_checkpoint, it was a config difference ("in_channels: 2 -> 1")
    args = latent_train_args(out, splits, "--n_epochs=2")
    args.vqvae_checkpoint = None
    with pytest.raises(UserError, match=r"is a latent model, trained on the latents of the first stage .*vq.*; "
                                        r"resume it with --vqvae_checkpoint .*vq") as refused:
        train.main(args)
    assert "in_channels" not in str(refused.value)


@pytest.mark.slow
def test_train_vqvae_under_torchrun_trains_the_one_process_model(latent_run, tmp_path):
    """ddpm-ood's later README trains its VQ-VAE with torchrun: two processes (gloo), each a slice of the global
    batch, DDP-averaged gradients (and MONAI's codebook sync), rank 0 writing the files. The model is one
    process's up to float rounding (the same data, steps and losses, summed in another order), which Adam can
    grow to about its step size per step: the validation loss agrees to 1e-5, each weight within 2 x lr x steps."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    _, splits = latent_run
    flags = [f"--output_dir={tmp_path}", f"--training_ids={splits['train']}", f"--validation_ids={splits['val']}",
             *VQVAE_FLAGS, "--n_epochs=2", "--perceptual_weight=0", "--adversarial_weight=0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        result = subprocess.run([sys.executable, *launcher, str(ROOT / "train_vqvae.py"), f"--model_name={name}", *flags],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (torch.load(tmp_path / name / "final_model.pth", weights_only=True) for name in ("one", "two"))
    assert one["epoch"] == two["epoch"] == 2 and two["training"]["batch_size"] == one["training"]["batch_size"]
    checkpoint = torch.load(tmp_path / "two" / "checkpoint.pth", weights_only=True)
    steps = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=True)["step"]
    assert checkpoint["step"] == steps == 6  # 24 images in global batches of 8, two epochs
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key].float(), value.float(), rtol=0, atol=2 * 1e-4 * steps, msg=key)


def test_every_train_vqvae_flag_reaches_the_recorded_network_or_settings(latent_run, capsys):
    out, splits = latent_run
    train_vqvae.main(vqvae_args(out, splits, "--model_name=kl", "--autoencoder=autoencoderkl", "--n_epochs=1",
                                "--kl_weight=0.001", "--adversarial_warmup=3", "--spectral_weight=0", "--lr=0.0002",
                                "--lr_d=0.0003", "--eval_freq=2"))
    record = read_first_stage(out / "kl")
    assert record["autoencoder"] == "autoencoderkl" and record["network"]["latent_channels"] == 2
    assert {k: record["training"][k] for k in ("kl_weight", "adversarial_warmup", "spectral_weight", "lr", "lr_d",
                                               "eval_freq")} == {"kl_weight": 0.001, "adversarial_warmup": 3,
                                                                 "spectral_weight": 0.0, "lr": 0.0002, "lr_d": 0.0003,
                                                                 "eval_freq": 2}
    train_vqvae.main(vqvae_args(out, splits, "--model_name=vq_flags", "--n_epochs=1", "--vqvae_commitment_cost=0.5",
                                "--vqvae_decay=0.9", "--vqvae_downsample_parameters=[[2,3,1,1],[2,3,1,1]]",
                                "--vqvae_upsample_parameters=[[2,3,1,1,1],[2,3,1,1,1]]"))
    network = read_first_stage(out / "vq_flags")["network"]
    assert (network["commitment_cost"], network["decay"]) == (0.5, 0.9)
    assert network["downsample_parameters"] == [[2, 3, 1, 1]] * 2 and network["upsample_parameters"] == [[2, 3, 1, 1, 1]] * 2
    for bad in ("--vqvae_num_channels=[8,x]", "--vqvae_downsample_parameters=[2,4,1,1]"):
        with pytest.raises(SystemExit):
            vqvae_args(out, splits, bad)
        assert "expected a list" in capsys.readouterr().err


def test_the_pytorch_ood_adapter_takes_images_for_a_latent_model(latent_run):
    """pytorch-ood's Detector on a latent model: fitted and scoring on images (encoded by the first stage)."""
    pytest.importorskip("pytorch_ood")
    from ddpm_ood.api import pytorch_ood_detector
    from ddpm_ood.data.loading import load_split

    out, splits = latent_run
    detector = pytorch_ood_detector(out / "blobs" / "best_model.pth", "denoise", device="cpu", denoise_levels=2)
    images = load_split(splits["train"], True).images  # 24 images: enough for the fit
    detector.fit([(images, torch.zeros(len(images)))])
    stripes = load_split(splits["ood"], True).images
    scores = detector(torch.cat([images[:4], stripes[:4]]))
    assert scores.shape == (8,) and torch.isfinite(torch.as_tensor(scores)).all()
    with pytest.raises(UserError, match="convert them to 1 channel"):
        detector(torch.rand(2, 3, 28, 28))


def test_a_first_stage_file_given_as_the_ddpm_is_named_for_what_it_is(latent_run):
    """--eval_checkpoint or load_model on a first stage's model file: it says it is a first stage's file
    and where it goes, not "written by a different version or edited by hand; retrain"."""
    from ddpm_ood.models.model_file import CheckpointError

    out, _ = latent_run
    with pytest.raises(CheckpointError, match=r"is a first stage's file \(train_vqvae.py's\), not a DDPM's.*"
                                              r"--vqvae_checkpoint"):
        load_model(out / "vq" / "best_model.pth")


@pytest.mark.slow
def test_a_new_learning_rate_on_resume_is_applied_not_only_recorded(latent_run, tmp_path):
    """train_vqvae.py resumed with another --lr / --lr_d trains with them from the resumed step on."""
    import shutil

    out, splits = latent_run
    shutil.copytree(out / "vq", tmp_path / "vq")
    train_vqvae.main(vqvae_args(tmp_path, splits, "--n_epochs=3", "--lr=3e-4", "--lr_d=2e-4"))
    state = torch.load(tmp_path / "vq" / "checkpoint.pth", weights_only=True)
    assert state["optimizer_g"]["param_groups"][0]["lr"] == 3e-4
    assert state["optimizer_d"]["param_groups"][0]["lr"] == 2e-4
    assert state["training"]["lr"] == 3e-4 and state["training"]["lr_d"] == 2e-4


def test_a_first_stages_checkpoint_is_taken_as_the_later_readme_passes_it(latent_run, caplog):
    """ddpm-ood's later README passes --vqvae_checkpoint=<run>/checkpoint.pth: its latest weights,
    said in one line (it used to be refused as "a file of train.py")."""
    out, _ = latent_run
    with caplog.at_level("INFO", logger="ddpm_ood"):
        record = read_first_stage(out / "vq" / "checkpoint.pth")
    assert "its latest weights are used" in caplog.text
    final = torch.load(out / "vq" / "final_model.pth", weights_only=True)
    assert record["kind"] == "first_stage" and record["autoencoder"] == final["autoencoder"]
    assert all(torch.equal(record["model"][k], final["model"][k]) for k in final["model"])  # the last epoch's
    assert not {"optimizer_g", "discriminator", "rng"} & set(record)
    space = LatentSpace.from_record(record, "checkpoint")
    assert space.encode(torch.rand(2, 1, 28, 28)).shape == (2, 2, 7, 7)
