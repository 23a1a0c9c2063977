"""Ground-truth masks in split CSVs, carried into the kept examples, and ood/localisation.csv: the field's
pixel-level metrics of each kind of map beside the no-model baseline (issue 32, part 4, begun)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import ood_detection
import reconstruct
from conftest import make_images, write_split
from ddpm_ood.data.loading import load_images
from ddpm_ood.evaluation.anomaly_maps import baseline_maps, localisation_rows
from ddpm_ood.utils.errors import DataError
from helpers.pipeline import train_tiny


def lesion_split(folder, name, n, seed):
    """Blob images with a bright 6x6 square at a random place, their masks in a ``mask`` column."""
    rng = np.random.default_rng(seed)
    images = make_images(folder / "images", name, n, seed)
    masks = []
    for path in images:
        image = np.load(path).astype(np.int32)
        row, col = rng.integers(2, 20, size=2)
        mask = np.zeros(image.shape, np.uint8)
        mask[row:row + 6, col:col + 6] = 1
        np.save(path, np.clip(image + 200 * mask, 0, 255).astype(np.uint8))
        masks.append(folder / "masks" / path.name)
        masks[-1].parent.mkdir(parents=True, exist_ok=True)
        np.save(masks[-1], mask)
    split = folder / f"{name}_test.csv"
    pd.DataFrame({"filename": [str(p) for p in images], "mask": [str(m) for m in masks]}).to_csv(split, index=False)
    return split, masks


def test_masks_are_read_from_the_split_made_as_the_images_and_checked(tmp_path):
    split, masks = lesion_split(tmp_path, "Lesion", 3, 0)
    image_set = load_images(split, True)
    arrays = image_set.masks(2)
    assert arrays["masks"].shape == (2, 28, 28) and arrays["masks"].dtype == bool
    assert (arrays["masks"][1] == (np.load(masks[1]) != 0)).all()
    assert load_images(write_split(tmp_path / "plain.csv", [tmp_path / "images" / "Lesion_0.npy"]), True).masks(1) == {}
    np.save(masks[0], np.zeros((20, 20), np.uint8))
    with pytest.raises(DataError, match="the mask .* has shape \\(20, 20\\) .* the images have \\(28, 28\\)"):
        image_set.masks(3)


def test_perfect_maps_score_one_and_the_baseline_is_an_abs_z_score():
    rng = np.random.default_rng(0)
    inputs = rng.random((4, 1, 16, 16))
    truths = np.zeros((4, 16, 16), bool)
    truths[:, 4:11] = True  # bands of 7 whole rows: the 5x5 median filter keeps them exactly
    examples = {"in": {"inputs": inputs}, "Lesion": {"inputs": inputs, "masks": truths}}
    maps = {"in": {"perfect": np.zeros((4, 16, 16))}, "Lesion": {"perfect": truths.astype(float)}}
    images = []
    (row,) = localisation_rows(maps, examples, images=images)
    assert (row["set"], row["map"], row["pixel_auroc"], row["pixel_auprc"], row["best_dice"]) == \
        ("Lesion", "perfect", 1.0, 1.0, 1.0)
    assert row["scan_auroc_mean"] == 1.0 and row["scan_auroc_p99"] == 1.0  # healthy maps are 0 everywhere
    assert len(images) == 4 and all(i["best_dice"] == 1.0 and i["pixel_auprc"] == 1.0 for i in images)
    val = rng.random((5, 1, 16, 16))
    expected = np.abs(inputs[:, 0] - val[:, 0].mean(0)) / val[:, 0].std(0, ddof=1)
    np.testing.assert_allclose(baseline_maps(inputs, val), expected)


@pytest.mark.slow
def test_ood_detection_writes_the_localisation_table(tmp_path, synthetic_splits, capsys):
    split, _ = lesion_split(tmp_path / "lesion", "Lesion", 6, 5)
    train_tiny(tmp_path, synthetic_splits)
    reconstruct.main(reconstruct.parse_args([
        f"--output_dir={tmp_path}", "--model_name=m", f"--validation_ids={synthetic_splits['val']}",
        f"--in_ids={synthetic_splits['test']}", f"--out_ids={split}", "--num_inference_steps=10",
        "--inference_skip_factor=5", "--metrics=mse", "--batch_size=4", "--num_workers=0", "--save_maps=8",
        "--detectors=recon,partial"]))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m", "--bootstrap=0"]))
    table = pd.read_csv(tmp_path / "m" / "ood" / "localisation.csv")
    assert list(table["map"]) == ["recon_z", "recon_l1", "partial_z", "partial_l1", "baseline"]
    assert set(table["set"]) == {"Lesion"} and table["n_images"].tolist() == [6] * 5
    # the partial-diffusion detector's maps: its own examples, maps file and figure
    partial = np.load(tmp_path / "m" / "ood" / "partial" / "maps_Lesion.npz")
    assert partial["z"].shape == (6, 3, 28, 28) and list(partial["t"]) == [250, 500, 750]
    assert (tmp_path / "m" / "ood" / "figures" / "maps_Lesion_partial.png").is_file()
    for column in ("pixel_auroc", "pixel_auprc", "best_dice", "dice_at_5pct"):
        assert table[column].between(0, 1).all(), column
    assert table.set_index("map").loc["baseline", "pixel_auroc"] > 0.8  # a bright square on blobs: easy
    for column in ("scan_auroc_mean", "scan_auroc_p99"):
        assert table[column].between(0, 1).all(), column
    images = pd.read_csv(tmp_path / "m" / "ood" / "localisation_per_image.csv")
    assert len(images) == 5 * 6 and set(images["map"]) == set(table["map"])
    assert (images["lesion_voxels"] == 36).sum() >= 5 and images["best_dice"].between(0, 1).all()
    assert {"filename", "pixel_auprc", "dice_at_5pct", "map_mean", "map_p99"} <= set(images)
    printed = capsys.readouterr().out
    assert "Localisation on Lesion (baseline, 6 images): pixel AUPRC " in printed
    # A run that measured partial alone (no paper's detector: 3 UNet calls an image) has its maps and table too.
    import shutil

    shutil.rmtree(tmp_path / "m" / "ood")
    reconstruct.main(reconstruct.parse_args([
        f"--output_dir={tmp_path}", "--model_name=m", f"--validation_ids={synthetic_splits['val']}",
        f"--in_ids={synthetic_splits['test']}", f"--out_ids={split}", "--batch_size=4", "--num_workers=0",
        "--save_maps=all", "--detectors=partial"]))
    ood_detection.main(ood_detection.parse_args([f"--output_dir={tmp_path}", "--model_name=m", "--bootstrap=0"]))
    table = pd.read_csv(tmp_path / "m" / "ood" / "localisation.csv")
    assert list(table["map"]) == ["partial_z", "partial_l1", "baseline"] and table["n_images"].tolist() == [6] * 3
    assert (tmp_path / "m" / "ood" / "figures" / "maps_Lesion_partial.png").is_file()
