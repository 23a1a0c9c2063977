"""--intensity (issue 32, part 2): robust percentile scaling beside the paper's min-max, recorded in the model,
applied wherever its images are made (files, tensors, volumes), checked, and part of the identity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import reconstruct
import train
from conftest import blob_splits
from ddpm_ood.data.loading import load_images, parse_intensity, prepare_images, scale_intensity
from ddpm_ood.utils.errors import UserError
from helpers.pipeline import tiny_train_args


@pytest.mark.parametrize("text, written", [("minmax", "minmax"), ("percentile", "percentile:0.5,99.5"),
                                           ("Percentile:1,99", "percentile:1,99"), ("percentile:0,100", "percentile:0,100")])
def test_intensity_specs_have_one_written_form(text, written):
    assert parse_intensity(text) == written


@pytest.mark.parametrize("text", ["zscore", "percentile:99,1", "percentile:5", "percentile:-1,50", "percentile:a,b"])
def test_other_intensity_specs_are_refused_saying_what_is_taken(text):
    with pytest.raises(ValueError, match="expected minmax, percentile, or percentile:LO,HI"):
        parse_intensity(text)
    with pytest.raises(SystemExit):
        train.parse_args(["--output_dir=o", "--model_name=m", "--training_ids=a", "--validation_ids=b",
                          f"--intensity={text}"])


def test_percentile_scaling_maps_the_percentiles_to_0_and_1_and_clips_beyond():
    image = np.arange(1001, dtype=np.float32).reshape(1, 7, 143)  # values 0..1000: percentile q is 10 q
    scaled = scale_intensity(image, "percentile:1,99")
    np.testing.assert_allclose(scaled, np.clip((image - 10) / 980, 0, 1), atol=1e-6)
    assert scaled.dtype == np.float32
    # one hot voxel: min-max squeezes the whole image towards 0; percentile clips the voxel and keeps the rest (its
    # percentiles move by one rank at most)
    hot = image.copy()
    hot[0, 3, 3] = 1e6
    assert scale_intensity(hot, "minmax")[0, 5, 100] < 0.001
    np.testing.assert_allclose(np.delete(scale_intensity(hot, "percentile:1,99"), 3 * 143 + 3),
                               np.delete(scaled, 3 * 143 + 3), atol=2e-3)
    assert scale_intensity(hot, "percentile:1,99")[0, 3, 3] == 1.0
    # mostly one value (a near-empty mask): the percentiles meet, and min-max is used instead
    mask = np.zeros((1, 20, 20), np.float32)
    mask[0, 2, 2] = 1
    np.testing.assert_array_equal(scale_intensity(mask, "percentile"), mask)


@pytest.mark.slow
def test_a_percentile_model_records_applies_and_checks_its_scaling(tmp_path):
    """Trained with --intensity percentile: recorded in its files and identity; tensors given to the API and files
    scored are scaled as its training images were; a flag that says otherwise is refused, naming both. One hot
    pixel in a healthy image moves its score by less than the spread of healthy scores."""
    from ddpm_ood.api import ImageDetector
    from ddpm_ood.models.loading import ModelSource, load_model

    paths = blob_splits(tmp_path)
    out = tmp_path / "models"
    train.main(tiny_train_args(out, paths, "--intensity=percentile", epochs=2))
    best = torch.load(out / "m" / "best_model.pth", weights_only=True)
    assert best["preprocessing"] == {"intensity": "percentile:0.5,99.5"}
    model = load_model(ModelSource.of("run", out / "m" / "best_model.pth"))
    assert model.parts["intensity"] == "percentile:0.5,99.5"
    assert model.preprocessing() == (None, None, "percentile:0.5,99.5")
    with pytest.raises(UserError, match=r"--intensity minmax, but the model .* was trained on images as stored, "
                                        r"intensities scaled by --intensity percentile:0.5,99.5"):
        reconstruct.main(reconstruct.parse_args([f"--output_dir={out}", "--model_name=m",
                                                 f"--validation_ids={paths['val']}", "--run_in=0", "--run_out=0",
                                                 "--intensity=minmax", "--num_workers=0"]))
    with pytest.raises(UserError, match=r"trained on images as stored, intensities scaled by --intensity "
                                        r"percentile:0.5,99.5; this command asks for images as stored\. Resume"):
        train.main(tiny_train_args(out, paths, epochs=3))  # resumed without the flag: min-max
    healthy = np.stack([np.load(f).astype(np.float32) for f in pd.read_csv(paths["fit"])["filename"]])[:, None]
    loaded = load_images(paths["fit"], True, intensity="percentile").images  # the files as the scripts read them
    np.testing.assert_array_equal(prepare_images(healthy, intensity="percentile"), loaded)  # tensors as files
    # One hot pixel (40 times the brightest) in each of 4 healthy images, scored by the paper's detector: under
    # percentile scaling the scores move by less than the healthy scores' spread; under min-max (the same data, a
    # model trained on it) the image is squeezed towards 0 and they move by several spreads.
    train.main(tiny_train_args(out, paths, epochs=2, name="minmax"))
    val = np.stack([np.load(f) for f in pd.read_csv(paths["val"])["filename"]])[:, None]
    hot = healthy[:4].copy()
    hot[:, 0, 3, 3] = 255.0 * 40
    moved = {}
    for name in ("m", "minmax"):
        detector = ImageDetector(out / name / "best_model.pth", device="cpu", num_inference_steps=10,
                                 inference_skip_factor=3, metrics="mse").fit_images(val)
        scores = detector.predict(healthy).numpy()
        moved[name] = np.abs(detector.predict(hot).numpy() - scores[:4]).mean() / scores.std(ddof=1)
    assert moved["m"] < 1 < moved["minmax"], moved


def test_volumes_are_scaled_as_asked_when_read(tmp_path):
    from conftest import write_split

    volume = np.random.default_rng(0).gamma(2.0, 50.0, (10, 10, 10)).astype(np.float32)
    volume[2, 2, 2] = 1e5  # a hot voxel
    np.save(tmp_path / "v.npy", volume)
    split = write_split(tmp_path / "V_test.csv", [tmp_path / "v.npy"])
    read = load_images(split, True, spatial_dimension=3, intensity="percentile:1,99").images[0]
    np.testing.assert_allclose(read.numpy(), scale_intensity(volume[None], "percentile:1,99"), atol=1e-6)
    assert 0.15 < float(read.mean()) < 0.5  # min-max would put the whole volume near 0
    assert float(load_images(split, True, spatial_dimension=3).images[0].mean()) < 0.01
