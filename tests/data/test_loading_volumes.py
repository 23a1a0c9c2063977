"""3D volumes (issue 25, part 3): .npy and NIfTI volumes in split CSVs, read as needed; the UNet in 3D;
LPIPS over slices; the pixel and the latent pipeline end to end; and the bad volumes the issue names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import ood_detection
import reconstruct
import train
from conftest import TINY_CONFIG, write_split
from ddpm_ood.data.loading import LazyVolumes, load_images
from ddpm_ood.metrics.distances import slices
from ddpm_ood.models.unet import UNet
from ddpm_ood.utils.errors import DataError, UserError

nibabel = pytest.importorskip("nibabel")


def make_volumes(folder: Path, prefix: str, n: int, seed: int, kind: str = "ball", shape=(12, 12, 12),
                 nifti: bool = False) -> list[Path]:
    """n uint8 volumes: 'ball' (a bright centre) or 'slabs' (bright planes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    files = []
    for i in range(n):
        if kind == "ball":
            r = rng.uniform(2, 4)
            volume = 255 * np.exp(-sum((g - s / 2) ** 2 for g, s in zip((zz, yy, xx), shape)) / (2 * r * r))
        else:
            volume = 255.0 * ((zz // rng.integers(2, 4)) % 2)
        volume = np.clip(volume + rng.normal(0, 8, shape), 0, 255).astype(np.uint8)
        if nifti:
            files.append(folder / f"{prefix}_{i}.nii.gz")
            nibabel.save(nibabel.Nifti1Image(volume.astype(np.float32), np.eye(4)), files[-1])
        else:
            files.append(folder / f"{prefix}_{i}.npy")
            np.save(files[-1], volume)
    return files


@pytest.fixture(scope="module")
def volume_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    splits = root / "data_splits"
    return root, {
        "train": write_split(splits / "Balls_train.csv", make_volumes(root / "bt", "b", 12, 0)),
        "val": write_split(splits / "Balls_val.csv", make_volumes(root / "bv", "b", 4, 1, nifti=True)),
        "test": write_split(splits / "Balls_test.csv", make_volumes(root / "bte", "b", 4, 2)),
        "ood": write_split(splits / "Slabs_test.csv", make_volumes(root / "st", "s", 4, 3, "slabs", nifti=True)),
    }


def test_volumes_are_read_as_needed_and_match_their_files(volume_splits):
    _, splits = volume_splits
    image_set = load_images(splits["val"], True, spatial_dimension=3)
    assert isinstance(image_set.images, LazyVolumes) and image_set.images.shape == (4, 1, 12, 12, 12)
    volume = np.asarray(nibabel.load(image_set.filenames[2]).dataobj, dtype=np.float32)
    expected = (volume - volume.min()) / (volume.max() - volume.min())
    np.testing.assert_allclose(image_set.images[2][0].numpy(), expected, atol=1e-6)
    assert torch.equal(image_set.images[1:3], torch.stack([image_set.images[1], image_set.images[2]]))
    assert torch.equal(image_set.images[torch.tensor([3, 0])][1], image_set.images[0])
    cropped = load_images(splits["val"], True, spatial_dimension=3, image_roi=[8, 8, 12], image_size=None)
    assert cropped.images.shape == (4, 1, 8, 8, 12)
    # A ROI larger than the volumes along some axis was silently not applied there (then often resized).
    with pytest.raises(DataError, match=r"is \(12, 12, 12\), smaller than --image_roi \[8, 8, 20\]"):
        load_images(splits["val"], True, spatial_dimension=3, image_roi=[8, 8, 20], image_size=16)
    np.testing.assert_allclose(cropped.images[2][0].numpy().max(), 1.0)
    resized = load_images(splits["val"], True, spatial_dimension=3, image_size=16)
    assert resized.images[0].shape == (1, 16, 16, 16)


def test_unet_3d_and_slice_lpips():
    model = UNet(1, 1, 8, (1, 2), 1, (2,), num_groups=4, dims=3)
    x = torch.randn(2, 1, 8, 10, 12)
    assert model(x, torch.tensor([3, 700])).shape == x.shape
    volumes = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 1, 3, 4, 5)
    along_h = slices(volumes, 3)  # (2 * 4, 1, 3, 5): slice j of volume i is volumes[i, :, :, j]
    assert along_h.shape == (8, 1, 3, 5) and torch.equal(along_h[5], volumes[1, :, :, 1])


def test_bad_volumes_are_refused_naming_the_file(volume_splits, tmp_path):
    root, splits = volume_splits
    other = make_volumes(tmp_path / "o", "o", 1, 0, shape=(10, 12, 12))
    mixed = write_split(tmp_path / "mixed.csv", pd.read_csv(splits["train"])["filename"].tolist()[:2] + other)
    with pytest.raises(DataError, match="o_0.npy has shape .*all volumes of a split must have one shape"):
        load_images(mixed, True, spatial_dimension=3)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((12, 12)))
    with pytest.raises(DataError, match="flat.npy is a 2D image"):
        load_images(write_split(tmp_path / "flat.csv", [flat]), True, spatial_dimension=3)
    timed = tmp_path / "timed.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((12, 12, 12, 3), np.float32), np.eye(4)), timed)
    with pytest.raises(DataError, match="timed.nii.gz has a time .*axis of 3 volumes"):
        load_images(write_split(tmp_path / "timed.csv", [timed]), True, spatial_dimension=3)


def volume_train_flags(out, splits, *extra):
    return [f"--output_dir={out}", "--model_name=balls", f"--training_ids={splits['train']}",
            f"--validation_ids={splits['val']}", "--is_grayscale=1", f"--config_diffusion_file={TINY_CONFIG}",
            "--n_epochs=1", "--batch_size=4", "--num_sample_images=2", "--sample_steps=2", "--num_workers=0",
            "--spatial_dimension=3", *extra]


def volume_train_args(out, splits, *extra):
    return train.parse_args(volume_train_flags(out, splits, *extra))


def volume_reconstruct_args(out, splits, *extra):
    return reconstruct.parse_args([
        f"--output_dir={out}", "--model_name=balls", f"--validation_ids={splits['val']}", f"--in_ids={splits['test']}",
        f"--out_ids={splits['ood']}", "--num_inference_steps=10", "--inference_skip_factor=4", "--batch_size=2",
        "--save_examples=2", "--save_maps=3", *extra])


@pytest.mark.slow
def test_3d_pixel_pipeline_end_to_end(volume_splits, random_alexnet_home, capsys):
    root, splits = volume_splits
    out = root / "models"
    train.main(volume_train_args(out, splits))
    stored = torch.load(out / "balls" / "best_model.pth", weights_only=True)
    assert stored["image_shape"] == [1, 12, 12, 12] and stored["config"]["ldm"]["params"]["unet_config"]["params"][
        "dims"] == 3
    reconstruct.main(volume_reconstruct_args(out, splits))
    val = pd.read_csv(out / "balls" / "ood" / "results_val.csv")
    assert len(val) == 4 * 3 and val["perceptual_difference"].notna().all() and (val["mse"] > 0).all()
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=balls"]))
    assert "AUC for balls vs Slabs: " in capsys.readouterr().out
    assert list((out / "balls" / "ood" / "figures").glob("*.png"))
    from ddpm_ood.api import OODDetector

    # The Python API takes volumes (N, C, D, H, W) and scores them as ood_detection.py scored their files.
    detector = OODDetector.load(out / "balls", device="cpu")
    files = pd.read_csv(splits["test"])["filename"].tolist()[:2]
    scores = detector.score(np.stack([np.load(f) for f in files])[:, None], filenames=files)
    written = pd.read_csv(out / "balls" / "ood" / "scores_in.csv")["score"].to_numpy()[:2]
    np.testing.assert_allclose(scores, written, rtol=1e-5)
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=balls",
                                                 f"--score_ids={splits['test']}"]))  # volumes read a batch at a time
    predictions = pd.read_csv(out / "balls" / "ood" / "predictions_Balls.csv")
    np.testing.assert_allclose(predictions["score"], pd.read_csv(out / "balls" / "ood" / "scores_in.csv")["score"],
                               rtol=1e-5)
    maps = np.load(out / "balls" / "ood" / "maps_Slabs.npz")  # --save_maps 3: the first 3 volumes of each set
    assert maps["z"].shape == (3, 3, 12, 12, 12) and maps["mean"].shape == (3, 12, 12, 12)
    assert (out / "balls" / "ood" / "figures" / "maps_Slabs.png").is_file()
    # the NIfTI scans' maps on their own grid (issue 32, part 5); the .npy volumes of the in-set get none
    scan_maps = sorted((out / "balls" / "ood" / "maps_nifti" / "Slabs").glob("*_anomaly_z.nii.gz"))
    assert [p.name[:6] for p in scan_maps] == ["000_s_", "001_s_", "002_s_"]
    np.testing.assert_allclose(nibabel.load(str(scan_maps[0])).get_fdata(), maps["mean"][0], rtol=1e-5, atol=1e-5)
    masks = sorted((out / "balls" / "ood" / "maps_nifti" / "Slabs").glob("*_flagged.nii.gz"))  # at 5 % of healthy
    assert len(masks) == 3 and nibabel.load(str(masks[0])).get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(nibabel.load(str(masks[0])).dataobj))) <= {0, 1}
    assert not (out / "balls" / "ood" / "maps_nifti" / "in").exists()
    # New scans' maps (issue 32, part 5): the API's equal the maps drawn for the same kept volumes, and
    # --score_ids --score_maps writes them, NIfTI scans' on their own grid
    slabs = torch.stack([torch.from_numpy(nibabel.load(f).get_fdata().astype(np.float32))[None]
                         for f in pd.read_csv(splits["ood"])["filename"][:3]])
    np.testing.assert_allclose(detector.maps(slabs), maps["mean"], rtol=1e-4, atol=1e-4)
    val_examples = detector.run.examples("val", detector._map_detector().folder())
    moved = val_examples.rename(val_examples.with_suffix(".away"))  # the validation maps are read once, not per batch
    try:
        np.testing.assert_allclose(detector.maps(slabs[1:]), maps["mean"][1:], rtol=1e-4, atol=1e-4)
    finally:
        moved.rename(val_examples)
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=balls",
                                                 f"--score_ids={splits['ood']}", "--score_maps"]))
    new_maps = np.load(out / "balls" / "ood" / "predictions_Slabs_maps.npz")
    assert new_maps["mean"].shape == (4, 12, 12, 12) and "z" in np.load(out / "balls" / "ood" / "maps_Slabs.npz")
    written_maps = sorted((out / "balls" / "ood" / "predictions_Slabs_maps").glob("*_anomaly_z.nii.gz"))
    assert len(written_maps) == 4 and len(list(written_maps[0].parent.glob("*_flagged.nii.gz"))) == 4
    assert new_maps["flagged"].shape == (4, 12, 12, 12) and set(np.unique(new_maps["flagged"])) <= {0, 1}
    np.testing.assert_allclose(nibabel.load(str(written_maps[0])).get_fdata(), new_maps["mean"][0], atol=1e-5)
    # A 2D split given to the 3D model: refused, naming the file.
    flat = root / "flat"
    flat.mkdir(exist_ok=True)
    np.save(flat / "f.npy", np.zeros((12, 12)))
    with pytest.raises(UserError, match="f.npy is a 2D image"):
        reconstruct.main(volume_reconstruct_args(out, {**splits, "ood": write_split(flat / "Flat_test.csv",
                                                                                   [flat / "f.npy"])}, "--run_val=0",
                                                 "--run_in=0"))


@pytest.mark.slow
def test_3d_latent_pipeline_end_to_end(volume_splits, random_alexnet_home, capsys):
    """A 3D VQ-VAE (with the slice-wise LPIPS loss), a 3D latent DDPM on it, and its scores."""
    import train_vqvae

    root, splits = volume_splits
    out = root / "latent_models"
    train_vqvae.main(train_vqvae.parse_args([
        f"--output_dir={out}", "--model_name=vq3d", f"--training_ids={splits['train']}",
        f"--validation_ids={splits['val']}", "--spatial_dimension=3", "--vqvae_num_channels=[8,8]",
        "--vqvae_num_res_channels=[8,8]", "--vqvae_num_res_layers=1", "--vqvae_num_embeddings=8",
        "--vqvae_embedding_dim=2", "--n_epochs=1", "--batch_size=4", "--num_workers=0"]))
    train.main(volume_train_args(out, splits, f"--vqvae_checkpoint={out / 'vq3d'}", "--latent_pad=1"))
    stored = torch.load(out / "balls" / "best_model.pth", weights_only=True)
    assert stored["image_shape"] == [2, 5, 5, 5] and stored["first_stage"]["network"]["spatial_dims"] == 3
    reconstruct.main(volume_reconstruct_args(out, splits, "--detectors=recon,denoise"))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={out}", "--model_name=balls"]))
    assert "AUC for balls vs Slabs: " in capsys.readouterr().out
    # A 2D run given the 3D first stage is refused before any work.
    with pytest.raises(UserError, match="first stage .* is 3D, but --spatial_dimension is 2"):
        train.main(volume_train_args(out, splits, f"--vqvae_checkpoint={out / 'vq3d'}", "--spatial_dimension=2",
                                     "--model_name=x"))


@pytest.mark.slow
def test_3d_pixel_and_latent_under_torchrun_give_one_process_bytes(volume_splits, tmp_path):
    """train.py and reconstruct.py on volumes under torchrun (2 processes, gloo): a pixel and a latent 3D
    model train, and reconstruct.py's results are the bytes of one process."""
    import os
    import subprocess
    import sys

    import train_vqvae
    from conftest import ROOT

    _, splits = volume_splits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train_vqvae.main(train_vqvae.parse_args([
        f"--output_dir={tmp_path}", "--model_name=vq", f"--training_ids={splits['train']}",
        f"--validation_ids={splits['val']}", "--spatial_dimension=3", "--vqvae_num_channels=[8,8]",
        "--vqvae_num_res_channels=[8,8]", "--vqvae_num_res_layers=1", "--vqvae_num_embeddings=8",
        "--vqvae_embedding_dim=2", "--n_epochs=1", "--batch_size=4", "--num_workers=0", "--perceptual_weight=0"]))

    def launch(script, nproc, *args):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        result = subprocess.run([*(launcher if nproc else [sys.executable]), str(ROOT / script), *args], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    for name, extra in (("pixel", []), ("latent", [f"--vqvae_checkpoint={tmp_path / 'vq'}"])):
        launch("train.py", 2, *volume_train_flags(tmp_path, splits, f"--model_name={name}", "--num_sample_images=0",
                                                   *extra))
        results = {}
        for nproc in (0, 2):
            out = tmp_path / f"{name}_{nproc}"
            (out / name).mkdir(parents=True)
            (out / name / "best_model.pth").write_bytes((tmp_path / name / "best_model.pth").read_bytes())
            launch("reconstruct.py", nproc, f"--output_dir={out}", f"--model_name={name}",
                   f"--validation_ids={splits['val']}", f"--in_ids={splits['test']}", "--run_out=0", "--metrics=mse",
                   "--num_inference_steps=10", "--inference_skip_factor=4", "--batch_size=2", "--chunk_size=2")
            results[nproc] = [(out / name / "ood" / f"results_{s}.csv").read_bytes() for s in ("val", "in")]
        assert results[2] == results[0], name


def test_image_roi_and_image_size_reach_training(volume_splits, tmp_path):
    _, splits = volume_splits
    train.main(volume_train_args(tmp_path, splits, "--image_roi=[10,10,10]", "--image_size=8", "--num_sample_images=0"))
    assert torch.load(tmp_path / "balls" / "best_model.pth", weights_only=True)["image_shape"] == [1, 8, 8, 8]
    with pytest.raises(UserError, match="--image_roi and --image_size apply to volumes"):
        train.main(volume_train_args(tmp_path, splits, "--spatial_dimension=2", "--image_size=8", "--model_name=flat"))


@pytest.mark.parametrize("case", ["truncated .nii.gz", "corrupt .nii.gz", "truncated .nii"])
def test_a_damaged_nifti_body_is_refused_before_any_work(tmp_path, case):
    """A header that reads but a body that does not (a gzip stream cut short or altered, a .nii file
    cut short) passed the header check and crashed mid-run."""
    volume = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    name = "v.nii" if case.endswith(".nii") else "v.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / name)
    data = (tmp_path / name).read_bytes()
    if case.startswith("truncated"):
        data = data[: len(data) * 2 // 3]
    else:  # one byte changed in the compressed body: the gzip CRC no longer matches
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
    (tmp_path / name).write_bytes(data)
    split = write_split(tmp_path / "s.csv", [tmp_path / name])
    with pytest.raises(DataError, match=rf"{name} is (truncated|a damaged NIfTI file|not a NIfTI file)"):
        load_images(split, True, spatial_dimension=3)


def test_the_crop_and_size_are_recorded_applied_and_checked(volume_splits, tmp_path):
    """Issue 33, case 1: a 3D run records how its volumes were made (--image_roi, then --image_size) in its model
    files; reconstruct.py and --score_ids make new volumes the same way without being told, and refuse flags
    that say otherwise; a resumed run asked for another crop is refused naming both."""
    from ddpm_ood.api import score_files
    from ddpm_ood.models.loading import ModelSource, load_model

    _, splits = volume_splits
    train.main(volume_train_args(tmp_path, splits, "--image_roi=[10,10,10]", "--image_size=8", "--num_sample_images=0"))
    best = torch.load(tmp_path / "balls" / "best_model.pth", weights_only=True)
    assert best["preprocessing"] == {"image_roi": [10, 10, 10], "image_size": 8}
    model = load_model(ModelSource.of("run", tmp_path / "balls" / "best_model.pth"))
    assert model.preprocessing() == ([10, 10, 10], 8, "minmax")
    assert model.preprocessing([10, 10, 10], None) == ([10, 10, 10], 8, "minmax")
    with pytest.raises(UserError, match=r"--image_size 12, but the model .* was trained on volumes cropped to "
                                        r"--image_roi \[10, 10, 10\], then resized to --image_size 8"):
        model.preprocessing(None, 12)
    # reconstruct.py without the flags: the model's crop and size (the 12^3 files become 8^3 volumes)
    reconstruct.main(reconstruct.parse_args([
        f"--output_dir={tmp_path}", "--model_name=balls", f"--validation_ids={splits['val']}",
        f"--in_ids={splits['test']}", f"--out_ids={splits['ood']}", "--num_inference_steps=4",
        "--inference_skip_factor=2", "--metrics=mse", "--batch_size=2", "--num_workers=0"]))
    with pytest.raises(UserError, match="--image_roi \\[8, 8, 8\\], but the model"):
        reconstruct.main(reconstruct.parse_args([
            f"--output_dir={tmp_path}", "--model_name=balls", f"--validation_ids={splits['val']}", "--run_in=0",
            "--run_out=0", "--image_roi=[8,8,8]", "--metrics=mse", "--num_workers=0"]))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=balls", "--bootstrap=0",
                                                 "--no_figures"]))
    predictions, _, _ = score_files(tmp_path / "balls", splits["ood"], device="cpu")  # new 12^3 files: cropped
    assert len(predictions) == 4 and np.isfinite(predictions["score"]).all()
    # whole 12^3 volumes as tensors: the advice is the model's crop, not "resize them" (right shape, wrong picture)
    from ddpm_ood.api import ImageDetector
    detector = ImageDetector(tmp_path / "balls" / "best_model.pth", detector="denoise", device="cpu")
    with pytest.raises(DataError, match=r"make them as the model's own were \(volumes cropped to --image_roi "
                                        r"\[10, 10, 10\], then resized to --image_size 8") as refused:
        detector.fit_images(torch.rand(2, 1, 12, 12, 12))
    assert "resize them" not in str(refused.value)
    # a list of grayscale (D, H, W) volumes is read as volumes, not as (C, H, W) images; (N, D, H, W) is refused
    volumes = torch.rand(3, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    detector.fit_images(volumes)
    np.testing.assert_allclose(detector.predict(list(volumes[:, 0].numpy())), detector.predict(volumes), rtol=1e-6)
    with pytest.raises(DataError, match=r"takes a batch of shape \(N, C, D, H, W\), got shape \(3, 8, 8, 8\): for "
                                        r"grayscale volumes \(N, D, H, W\) add their channel"):
        detector.predict(volumes[:, 0])
    with pytest.raises(UserError, match="was trained on volumes cropped to --image_roi \\[10, 10, 10\\].*asks for "
                                        "volumes cropped to --image_roi \\[11, 11, 11\\]"):
        train.main(volume_train_args(tmp_path, splits, "--image_roi=[11,11,11]", "--image_size=8", "--n_epochs=2",
                                     "--num_sample_images=0"))


@pytest.mark.slow
def test_a_ddpm_refuses_a_first_stage_of_volumes_made_otherwise(volume_splits, tmp_path):
    import train_vqvae

    _, splits = volume_splits
    train_vqvae.main(train_vqvae.parse_args([
        f"--output_dir={tmp_path}", "--model_name=vq", f"--training_ids={splits['train']}",
        f"--validation_ids={splits['val']}", "--spatial_dimension=3", "--image_roi=[10,10,10]", "--image_size=8",
        "--vqvae_num_channels=[8,8]", "--vqvae_num_res_channels=[8,8]", "--vqvae_num_res_layers=1",
        "--vqvae_num_embeddings=8", "--vqvae_embedding_dim=2", "--n_epochs=1", "--batch_size=4", "--num_workers=0",
        "--perceptual_weight=0", "--adversarial_weight=0"]))
    stored = torch.load(tmp_path / "vq" / "best_model.pth", weights_only=True)
    assert stored["preprocessing"] == {"image_roi": [10, 10, 10], "image_size": 8}
    with pytest.raises(UserError, match="The first stage .* was trained on volumes cropped to --image_roi "
                                        "\\[10, 10, 10\\], then resized to --image_size 8, but this command makes "
                                        "volumes resized to --image_size 8"):
        train.main(volume_train_args(tmp_path, splits, f"--vqvae_checkpoint={tmp_path / 'vq'}", "--image_size=8"))
    assert not (tmp_path / "balls").exists()  # refused before the run's folder was made


def test_volumes_too_small_for_the_patch_discriminator_are_refused_before_any_work(volume_splits, tmp_path):
    """8^3 volumes crashed the first training step inside MONAI's PatchDiscriminator (a traceback)."""
    import train_vqvae

    _, splits = volume_splits
    with pytest.raises(UserError, match="patch discriminator does not run on images of \\(1, 8, 8, 8\\).*"
                                        "--adversarial_weight 0"):
        train_vqvae.main(train_vqvae.parse_args([
            f"--output_dir={tmp_path}", "--model_name=vq", f"--training_ids={splits['train']}",
            f"--validation_ids={splits['val']}", "--spatial_dimension=3", "--image_size=8",
            "--vqvae_num_channels=[8,8]", "--vqvae_num_res_channels=[8,8]", "--num_workers=0", "--perceptual_weight=0"]))
    assert not (tmp_path / "vq").exists()


def test_finite_values_beyond_float32_are_named_not_called_infinite(tmp_path):
    """Issue 33, wording: a finite 1e300 voxel was reported as "NaN or infinite" (the float32 cast made it so)."""
    volume = np.random.default_rng(0).random((12, 12, 12))
    volume[3, 3, 3] = 1e300
    np.save(tmp_path / "big.npy", volume)
    volumes = load_images(write_split(tmp_path / "s.csv", [tmp_path / "big.npy"]), True, spatial_dimension=3)
    with pytest.raises(DataError, match="holds values up to 1e\\+300, beyond what float32 holds"):
        volumes.images[0]  # read when indexed
    image = np.random.default_rng(1).random((28, 28))
    image[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", image)
    with pytest.raises(DataError, match="contains NaN or infinite values"):
        load_images(write_split(tmp_path / "n.csv", [tmp_path / "nan.npy"]), True)


def test_nifti_files_of_mixed_orientation_or_spacing_are_said(tmp_path, caplog):
    """Issue 33, wording: volumes are read as stored (the affine is not applied); a split mixing orientations or
    voxel spacings is said, naming an example of each, instead of being compared voxel for voxel silently."""
    volume = np.zeros((6, 6, 6), np.float32)
    volume[1:3] = 1
    files = []
    for i, affine in enumerate([np.eye(4), np.eye(4), np.diag([-1.0, 1, 1, 1]), np.diag([2.0, 2, 2, 1])]):
        files.append(tmp_path / f"v{i}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(volume, affine), files[-1])
    with caplog.at_level("WARNING", logger="ddpm_ood.data.loading"):
        load_images(write_split(tmp_path / "same.csv", files[:2]), True, spatial_dimension=3)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="ddpm_ood.data.loading"):
        load_images(write_split(tmp_path / "mixed.csv", files), True, spatial_dimension=3)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "differ in orientation: RAS (e.g." in said and "LAS (e.g." in said and "v2.nii.gz" in said
    assert "differ in voxel spacing (mm): (1.0, 1.0, 1.0)" in said and "(2.0, 2.0, 2.0) (e.g." in said
    assert "the affine is not applied" in said


def test_a_training_set_of_constant_volumes_is_refused_and_image_size_1_by_the_parser(volume_splits, tmp_path,
                                                                                        caplog):
    """Issue 33, wording: constant volumes (all 0 once scaled) trained silently, and --image_size 1 made a 1-voxel
    model that printed AUROC 50. Now all-constant training sets are refused before any folder exists, a few
    constant ones are named in a warning, and the parser refuses --image_size 1."""
    import train_vqvae

    _, splits = volume_splits
    blank = []
    for i in range(3):
        blank.append(tmp_path / "blank" / f"z{i}.npy")
        blank[-1].parent.mkdir(exist_ok=True)
        np.save(blank[-1], np.full((12, 12, 12), 7, np.uint8))
    constant = write_split(tmp_path / "Blank_train.csv", blank)
    for run in (lambda: train.main(train.parse_args(volume_train_flags(tmp_path, {**splits, "train": constant}))),
                lambda: train_vqvae.main(train_vqvae.parse_args([
                    f"--output_dir={tmp_path}", "--model_name=balls", f"--training_ids={constant}",
                    f"--validation_ids={splits['val']}", "--spatial_dimension=3", "--num_workers=0"]))):
        with pytest.raises(DataError, match=r"Every image of .*Blank_train.csv is one value everywhere once read "
                                            r"\(e.g. .*z0.npy\).*learns nothing"):
            run()
        assert not (tmp_path / "balls").exists()
    some = write_split(tmp_path / "Some_train.csv", list(pd.read_csv(splits["train"])["filename"])[:4] + blank[:1])
    from ddpm_ood.data.loading import profile_training_set
    with caplog.at_level("WARNING", logger="ddpm_ood.data.loading"):
        profile_training_set(load_images(some, True, spatial_dimension=3), some)
    assert "1 of the 5 images of" in caplog.text and "z0.npy" in caplog.text
    with pytest.raises(SystemExit):
        train.parse_args(volume_train_flags(tmp_path, splits, "--image_size=1"))
    assert train.parse_args(volume_train_flags(tmp_path, splits, "--image_size=2")).image_size == 2


@pytest.mark.slow
def test_channels_last_trains_and_reconstructs_volumes_as_the_default_layout(volume_splits, tmp_path):
    """--channels_last on volumes: torch's channels_last is for 4D batches only and refused 3D ones, so the
    flag failed in 3D; they now take channels_last_3d and give the default layout's numbers."""
    import shutil

    _, splits = volume_splits
    for name, extra in (("plain", []), ("cl", ["--channels_last"])):
        train.main(volume_train_args(tmp_path, splits, f"--model_name={name}", "--num_sample_images=0", *extra))
    plain, cl = (torch.load(tmp_path / name / "checkpoint.pth", weights_only=True)["model"] for name in ("plain", "cl"))
    torch.testing.assert_close(cl, plain, atol=1e-5, rtol=1e-4)
    shutil.copytree(tmp_path / "plain", tmp_path / "plain_cl")
    for name, extra in (("plain", []), ("plain_cl", ["--channels_last"])):
        reconstruct.main(volume_reconstruct_args(tmp_path, splits, f"--model_name={name}", "--metrics=mse",
                                                 "--save_examples=0", "--save_maps=0", *extra))
    for split in ("val", "Slabs"):
        ours, theirs = (pd.read_csv(tmp_path / name / "ood" / f"results_{split}.csv") for name in ("plain", "plain_cl"))
        np.testing.assert_allclose(theirs["mse"], ours["mse"], rtol=1e-4)
